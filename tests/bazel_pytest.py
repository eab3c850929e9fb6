"""Runs one test file with pytest: the `main` of each Bazel py_test."""

import os
import sys

import pytest

if __name__ == "__main__":
    # Bazel gives each test a private temporary directory; keep pytest's files there.
    temporary = os.environ.get("TEST_TMPDIR")
    extra = ["--basetemp", os.path.join(temporary, "pytest")] if temporary else []
    code = pytest.main(["-q", "-p", "no:cacheprovider", *extra, *sys.argv[1:]])
    # A file whose tests a `-m` expression deselected entirely (`--test_arg=-m --test_arg="not slow"`) passes.
    sys.exit(0 if code == pytest.ExitCode.NO_TESTS_COLLECTED else code)
