"""The predict command: `spml-predict` and `python -m spml_tf.predict --saved_model=DIR a.jpg ...` (the work is
spml_tf/serving/predict.py).

Every input is predicted on its own: one that is missing, a directory, unreadable, too large or not an image
gets one line on stderr, the others are still predicted, and the exit code is 1 if any failed.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from spml_tf import cli
from spml_tf.data import image_limits
from spml_tf.serving.predict import predict_files


def define_flags():
    flags.DEFINE_string("saved_model", None, "Exported SavedModel (version directory or base path).")
    flags.DEFINE_integer("top_k", None, "Print the k most probable classes instead of those above the threshold.")
    flags.DEFINE_integer("max_image_pixels", image_limits.DEFAULT_MAX_PIXELS,
                         "Refuse an image whose header declares more pixels than this, before decoding it.")
    flags.DEFINE_boolean("verbose", False, "TensorFlow's own log lines and warnings.")


def _main(argv):
    program = cli.program_name("predict")
    sys.stdout.reconfigure(line_buffering=True)  # each result reaches a pipe as it is printed
    FLAGS = flags.FLAGS
    paths = argv[1:]
    if not FLAGS.saved_model or not paths:
        print(f"{program}: error: usage: {program} --saved_model=DIR IMAGE [IMAGE ...]", file=sys.stderr)
        sys.exit(2)
    if FLAGS.max_image_pixels < 1 or (FLAGS.top_k is not None and FLAGS.top_k < 1):
        print(f"{program}: error: --max_image_pixels and --top_k must be at least 1", file=sys.stderr)
        sys.exit(2)
    failed = 0
    try:
        for path, labels, problem in predict_files(FLAGS.saved_model, paths, FLAGS.top_k, FLAGS.max_image_pixels):
            if problem:
                failed += 1
                print(f"{program}: error: {path} {problem}", file=sys.stderr, flush=True)
                continue
            shown = ", ".join(f"{name} {p:.3f}" for name, p in labels) or "(no class above the threshold)"
            print(f"{path}: {shown}", flush=True)
    except FileNotFoundError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(130)
    if failed:
        print(f"{program}: {failed} of {len(paths)} input(s) failed", file=sys.stderr)
    sys.exit(1 if failed else 0)


def main():
    """`spml-predict` and `python -m spml_tf.predict`."""
    from spml_tf.core import quiet

    program = cli.program_name("predict")
    quiet.install(verbose=cli.verbose_asked(sys.argv))
    app.run(_main, flags_parser=cli.own_flags_parser(program, define_flags))


if __name__ == "__main__":
    main()
