"""Trains a single-positive multi-label classifier: `python train_main.py --dataset=digits`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from spml_tf import stopping  # noqa: E402

stopping.install("train_main.py")  # before TensorFlow starts its threads: they inherit the blocked signals

from absl import app  # noqa: E402

import flags  # noqa: E402,F401  (defines the flags)
from spml_tf import cli, export  # noqa: E402  (export imports no TensorFlow until an export runs)


def run():
    config = flags.config_from_flags()
    export.check_threshold(flags.FLAGS.serving_threshold)
    from spml_tf import train  # imports TensorFlow: after the flags are known to be good

    results = train.train_and_evaluate(config)
    if flags.FLAGS.export_dir:
        version_dir = export.export_run(results["config"]["model_dir"], flags.FLAGS.export_dir,
                                        flags.FLAGS.serving_threshold)
        print(f"Exported the SavedModel for TF Serving to {version_dir}")


if __name__ == "__main__":
    app.run(cli.main_for("train_main.py", run), flags_parser=cli.flags_parser("train_main.py"))
