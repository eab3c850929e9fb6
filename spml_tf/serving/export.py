"""SavedModel export for TF Serving (the library of `python -m spml_tf.export --model_dir=RUN --export_dir=DIR`).

Writes DIR/<next integer version>/ with three signatures:
  serving_default  image_bytes: string [batch] (JPEG/PNG/GIF/BMP/WebP, any size up to a pixel
                   limit read from the header before decoding), decoded,
                   resized and normalised inside the graph exactly as in evaluation
                   -> probabilities: float32 [batch, C] (sigmoid)
                      labels: string [batch, C], the classes whose probability
                              >= threshold, most probable first, padded with ""
  serve_images     images: float32 [batch, S, S, 3] in [0, 255] -> the same outputs
  metadata         -> class_names: string [C], threshold: float32 [], image_size: int32 [],
                      max_image_pixels: int64 []
The class names and threshold live inside the SavedModel: serving needs
TensorFlow only, not this package.
"""

import os

from spml_tf.core.errors import UsageError, reason
from spml_tf.data import image_limits
from spml_tf.training.metrics import THRESHOLD


def check_threshold(threshold):
    """UsageError unless 0 < threshold < 1 (checked before training, so a bad flag costs no run)."""
    if not 0.0 < threshold < 1.0:
        raise UsageError(f"--serving_threshold={threshold} must be in (0, 1)")


def check_export_dir(export_base):
    """UsageError when `export_base` cannot become a directory: it, or the nearest of its parents that exists, is
    a file (checked before training, so that the export at its end cannot fail on it)."""
    import os

    path = os.path.abspath(export_base) if "://" not in export_base else None
    while path and not os.path.exists(path):
        path = os.path.dirname(path) if os.path.dirname(path) != path else None
    if path and not os.path.isdir(path):
        raise UsageError(f"--export_dir={export_base}: {path} is a file, so no SavedModel can be written there")


def versions(export_base):
    """The integer version directories under a TF Serving base path, as ints (empty if none)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(export_base):
        return []
    return [int(name.rstrip("/")) for name in tf.io.gfile.listdir(export_base) if name.rstrip("/").isdigit()]


def next_version_dir(export_base):
    """export_base/<1 + the largest integer version already there> (TF Serving's layout)."""
    return os.path.join(export_base, str(max(versions(export_base), default=0) + 1))


def check_max_pixels(max_pixels):
    if max_pixels < 1:
        raise UsageError(f"--max_image_pixels={max_pixels} must be at least 1")


def export_saved_model(model, class_names, image_size, export_base, threshold=THRESHOLD,
                       max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Exports `model` (images in [0, 255] -> logits) for TF Serving; returns the version directory.

    A request image whose header declares more than `max_pixels` pixels fails
    (INVALID_ARGUMENT) before it is decoded.
    """
    import keras
    import tensorflow as tf

    from spml_tf.data import pipeline

    check_threshold(threshold)
    check_max_pixels(max_pixels)
    names = tf.constant(list(class_names), dtype=tf.string)
    if model.output_shape[-1] != len(class_names):
        raise UsageError(f"the model has {model.output_shape[-1]} outputs for {len(class_names)} class names")

    def outputs(images):
        probabilities = tf.sigmoid(tf.cast(model(images, training=False), tf.float32))
        order = tf.argsort(probabilities, axis=-1, direction="DESCENDING", stable=True)
        sorted_probabilities = tf.gather(probabilities, order, batch_dims=1)
        labels = tf.where(sorted_probabilities >= threshold, tf.gather(names, order), "")
        return {"probabilities": probabilities, "labels": labels}

    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda encoded: pipeline.decode_and_resize(encoded, image_size, max_pixels), image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        return outputs(images)

    def serve_images(images):
        return outputs(images)

    def metadata():
        return {"class_names": names, "threshold": tf.constant(threshold, tf.float32),
                "image_size": tf.constant(image_size, tf.int32),
                "max_image_pixels": tf.constant(max_pixels, tf.int64)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("serve_images", serve_images,
                         input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
    archive.add_endpoint("metadata", metadata, input_signature=[])
    try:
        version_dir = next_version_dir(export_base)
        _write_whole(archive, version_dir)
    except (tf.errors.OpError, OSError) as error:  # read-only, not a directory, no permission, disk full
        raise UsageError(f"--export_dir={export_base}: cannot write the SavedModel there ({reason(error)})") from None
    return version_dir


def _write_whole(archive, version_dir):
    """Writes the SavedModel under `<base>/.partial-<version>` (a name TF Serving ignores), then renames it to
    `<base>/<version>`: a server watching the base path never loads half an export, also after a kill. (A base
    path on another filesystem, gs:// say, has no directory rename: written in place there.)"""
    import tensorflow as tf

    if "://" in version_dir:
        archive.write_out(version_dir, verbose=False)
        return
    base, version = os.path.split(version_dir)
    partial = os.path.join(base, f".partial-{version}")
    if tf.io.gfile.exists(partial):  # left by an export killed while writing this version
        tf.io.gfile.rmtree(partial)
    archive.write_out(partial, verbose=False)
    os.rename(partial, version_dir)


def export_run(model_dir, export_base, threshold=THRESHOLD,
               max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Exports the model of a finished training run (its model.keras and results.json)."""
    from spml_tf.serving import classifier

    model, results = classifier.load_run(model_dir)
    return export_saved_model(model, results["class_names"], results["config"]["image_size"], export_base, threshold,
                              max_pixels)
