"""Trains a single-positive multi-label classifier: `python train_main.py --dataset=digits`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import app
from absl import flags as absl_flags

import flags  # noqa: F401  (defines the flags)
from spml_tf import export  # imports no TensorFlow until an export runs
from spml_tf.errors import DataError, UsageError


def parse_flags(argv):
    """absl's parser, but a bad flag is one line on stderr and exit code 2."""
    try:
        return absl_flags.FLAGS(argv)
    except absl_flags.Error as error:
        print(f"train_main.py: error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        print(f"train_main.py: error: unexpected arguments {argv[1:]}; flags take the form --name=value", file=sys.stderr)
        sys.exit(2)
    try:
        config = flags.config_from_flags()
        export.check_threshold(flags.FLAGS.serving_threshold)
        from spml_tf import train  # imports TensorFlow: after the flags are known to be good

        results = train.train_and_evaluate(config)
        if flags.FLAGS.export_dir:
            version_dir = export.export_run(results["config"]["model_dir"], flags.FLAGS.export_dir,
                                            flags.FLAGS.serving_threshold)
            print(f"Exported the SavedModel for TF Serving to {version_dir}")
    except (UsageError, DataError) as error:
        print(f"train_main.py: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
