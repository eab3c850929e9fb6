#!/usr/bin/env bash
# Writes .bazelrc.offline: `--config=offline` flags that replace the rule
# repositories Bazel 4 would download with local stand-ins.
# Usage: bash tools/bazel_offline_rc.sh /path/to/shared
set -euo pipefail
shared="$(cd "${1:?usage: $0 SHARED_DIR}" && pwd)"
cd "$(dirname "$0")/.."
cat > .bazelrc.offline <<RC
build:offline --override_repository=rules_python=${shared}/bazel-offline/rules_python
build:offline --override_repository=rules_cc=${shared}/bazel-offline/rules_cc
build:offline --override_repository=remote_coverage_tools=${shared}/bazel-offline/remote_coverage_tools
build:offline --override_repository=platforms=/usr/share/bazel/platforms
build:offline --override_repository=rules_java=/usr/share/bazel/rules/java
RC
echo "wrote $(pwd)/.bazelrc.offline"
