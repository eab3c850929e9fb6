"""Labels for image files from an exported SavedModel (the library of `python -m spml_tf.predict`).

Needs TensorFlow only. DIR is a version directory or a TF Serving base path
(then the highest version is used). Every input is predicted on its own: one
that is missing, a directory, unreadable, too large or not an image gets one
line on stderr, the others are still predicted, and the exit code is 1 if any
failed.
"""

import os

from spml_tf.data import image_limits
from spml_tf.serving import classifier, export


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
