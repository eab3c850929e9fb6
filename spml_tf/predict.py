"""Labels for image files from an exported SavedModel: `python -m spml_tf.predict --saved_model=DIR a.jpg ...`.

Needs TensorFlow only. DIR is a version directory or a TF Serving base path
(then the highest version is used).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from spml_tf import export


def resolve_version(path):
    """A SavedModel directory: `path` itself, or its highest integer version."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = export.versions(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no saved_model.pb and no integer version directory")
    return os.path.join(path, str(max(found)))


def predict_files(saved_model_dir, paths, top_k=None):
    """Yields (path, [(class, probability), ...] most probable first, or None if the file is no image).

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
        with tf.io.gfile.GFile(path, "rb") as f:
            encoded = tf.constant([f.read()])
        try:
            row = serve(image_bytes=encoded)["probabilities"].numpy()[0]
        except tf.errors.InvalidArgumentError:
            yield path, None
            continue
        ranked = sorted(zip(names, row.tolist()), key=lambda pair: -pair[1])
        yield path, (ranked[:top_k] if top_k else [pair for pair in ranked if pair[1] >= threshold])


def define_flags():
    flags.DEFINE_string("saved_model", None, "Exported SavedModel (version directory or base path).")
    flags.DEFINE_integer("top_k", None, "Print the k most probable classes instead of those above the threshold.")


def main(argv):
    import tensorflow as tf

    FLAGS = flags.FLAGS
    paths = argv[1:]
    if not FLAGS.saved_model or not paths:
        print("predict: error: usage: python -m spml_tf.predict --saved_model=DIR IMAGE [IMAGE ...]", file=sys.stderr)
        sys.exit(2)
    missing = [path for path in paths if not tf.io.gfile.exists(path)]
    if missing:
        print(f"predict: error: no such file: {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    failed = 0
    try:
        for path, labels in predict_files(FLAGS.saved_model, paths, FLAGS.top_k):
            if labels is None:
                failed += 1
                print(f"predict: error: {path} is not a decodable JPEG/PNG/GIF/BMP image", file=sys.stderr)
                continue
            shown = ", ".join(f"{name} {p:.3f}" for name, p in labels) or "(no class above the threshold)"
            print(f"{path}: {shown}", flush=True)
    except FileNotFoundError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    define_flags()
    app.run(main)
