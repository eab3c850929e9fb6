"""The export command: `spml-export` and `python -m spml_tf.export --model_dir=RUN --export_dir=DIR` (the work is
spml_tf/serving/export.py, which describes the SavedModel)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from spml_tf import cli
from spml_tf.core.errors import UsageError
from spml_tf.data import image_limits
from spml_tf.serving.export import check_max_pixels, check_threshold, export_run
from spml_tf.training.metrics import THRESHOLD


def define_flags():
    """The command-line flags (defined only when run as a program: train_main has its own)."""
    flags.DEFINE_string("model_dir", None, "Directory of a finished training run.")
    flags.DEFINE_string("export_dir", None, "TF Serving model base path; the next integer version is written.")
    flags.DEFINE_float("serving_threshold", THRESHOLD, "Probability from which a class is in `labels`.")
    flags.DEFINE_integer("max_image_pixels", image_limits.DEFAULT_MAX_PIXELS, "Requests whose image header "
                         "declares more pixels than this fail (INVALID_ARGUMENT) before the image is decoded.")
    flags.DEFINE_boolean("verbose", False, "TensorFlow's own log lines and warnings, and on an error the Python "
                         "traceback.")


def run():
    FLAGS = flags.FLAGS
    if not FLAGS.model_dir or not FLAGS.export_dir:
        raise UsageError("--model_dir and --export_dir are required")
    check_threshold(FLAGS.serving_threshold)
    check_max_pixels(FLAGS.max_image_pixels)
    version_dir = export_run(FLAGS.model_dir, FLAGS.export_dir, FLAGS.serving_threshold, FLAGS.max_image_pixels)
    print(f"Exported to {version_dir}")


def main():
    """`spml-export` and `python -m spml_tf.export`."""
    cli.run_command("export", define_flags, run)


if __name__ == "__main__":
    main()
