"""Labels for image files from an exported SavedModel: `python -m spml_tf.predict --saved_model=DIR a.jpg ...`.

Needs TensorFlow only. DIR is a version directory or a TF Serving base path
(then the highest version is used). Every input is predicted on its own: one
that is missing, a directory, unreadable, too large or not an image gets one
line on stderr, the others are still predicted, and the exit code is 1 if any
failed.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from spml_tf import classifier, cli, export, image_limits


def resolve_version(path):
    """A SavedModel directory: `path` itself, or its highest integer version."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = export.versions(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no saved_model.pb and no integer version directory")
    return os.path.join(path, str(max(found)))


def predict_files(saved_model_dir, paths, top_k=None, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Yields (path, [(class, probability), ...] most probable first, None) or (path, None, why it failed).

    Lists the classes at or above the model's threshold, or the top_k ones.
    One request per file, so one bad file does not hide the others' results.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(resolve_version(saved_model_dir))
    metadata = loaded.signatures["metadata"]()
    names = [name.decode() for name in metadata["class_names"].numpy()]
    threshold = float(metadata["threshold"].numpy())
    serve = loaded.signatures["serving_default"]
    for path in paths:
        data, problem = classifier.read_image_file(path, max_pixels)
        if problem:
            yield path, None, problem
            continue
        try:
            row = serve(image_bytes=tf.constant([data]))["probabilities"].numpy()[0]
        except tf.errors.InvalidArgumentError:
            yield path, None, f"is not a decodable {image_limits.FORMATS} image"
            continue
        ranked = sorted(zip(names, row.tolist()), key=lambda pair: -pair[1])
        yield path, (ranked[:top_k] if top_k else [pair for pair in ranked if pair[1] >= threshold]), None


def define_flags():
    flags.DEFINE_string("saved_model", None, "Exported SavedModel (version directory or base path).")
    flags.DEFINE_integer("top_k", None, "Print the k most probable classes instead of those above the threshold.")
    flags.DEFINE_integer("max_image_pixels", image_limits.DEFAULT_MAX_PIXELS,
                         "Refuse an image whose header declares more pixels than this, before decoding it.")


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
    define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
