"""A finished training run as a Python object, for notebooks and scripts.

    from spml_tf.serving.classifier import Classifier
    classifier = Classifier.from_run("runs/digits-em_apl")
    probabilities = classifier.predict_files(["a.jpg", "b.png"])   # [2, C]
    classifier.labels(probabilities)                                 # [["cat", "dog"], []]

Images are decoded and resized exactly as in evaluation and in the exported
SavedModel (pipeline.decode_and_resize), so the three give the same numbers.
"""

import numpy as np

from spml_tf.data import image_limits
from spml_tf.training import run_dir
from spml_tf.training import results as results_lib
from spml_tf.core.errors import DataError, UsageError, reason

_RETRAIN = "; train the run again (the same command resumes and rewrites it)"


def load_run(model_dir):
    """(the Keras model, the run's results dict) of a finished run; UsageError / DataError naming what is wrong."""
    import zipfile

    import keras
    import tensorflow as tf

    from spml_tf.core import files

    model_path = files.join(model_dir, run_dir.MODEL_FILE)
    if not tf.io.gfile.exists(model_path):
        raise UsageError(f"{model_path} not found: --model_dir must be the directory of a finished training run")
    results = results_lib.read(model_dir)
    with tf.io.gfile.GFile(model_path, "rb") as f:
        complete = zipfile.is_zipfile(f)  # Keras says "File not found" for a truncated archive
    if not complete:
        raise DataError(f"{model_path} is damaged (not a complete .keras archive){_RETRAIN}")
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{model_path} does not load ({reason(error)}){_RETRAIN}") from None
    outputs, names = model.output_shape[-1], len(results["class_names"])
    if outputs != names or tuple(model.input_shape[1:3]) != (results["config"]["image_size"],) * 2:
        raise DataError(f"{model_path} and {files.join(model_dir, run_dir.RESULTS)} are of different runs (the model "
                        f"takes {model.input_shape[1]} px images to {outputs} classes, the results name {names} "
                        f"classes at {results['config']['image_size']} px){_RETRAIN}")
    return model, results


def read_image_file(path, max_pixels):
    """(bytes, None), or (None, why the file cannot be predicted): missing, a directory, unreadable, too large."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None, "does not exist"
    if tf.io.gfile.isdir(path):
        return None, "is a directory, not an image file"
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.OpError as error:
        return None, f"cannot be read ({reason(error)})"
    problem = image_limits.problem(data, max_pixels)
    return (None, problem) if problem else (data, None)


class Classifier:
    """A model (images in [0, 255] -> logits) with its class names, input size and decision threshold."""

    def __init__(self, model, class_names, image_size, threshold):
        self.model = model
        self.class_names = list(class_names)
        self.image_size = int(image_size)
        self.threshold = float(threshold)

    @classmethod
    def from_run(cls, model_dir, threshold=None):
        """The best epoch's model of a finished run (its model.keras and results.json)."""
        model, results = load_run(model_dir)
        config = results["config"]
        return cls(model, results["class_names"], config["image_size"],
                   config["threshold"] if threshold is None else threshold)

    def probabilities(self, images, batch_size=32):
        """float32 [N, C] sigmoid probabilities of images float [N, S, S, 3] in [0, 255]."""
        import tensorflow as tf

        logits = self.model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
        return tf.sigmoid(tf.cast(logits, tf.float32)).numpy()

    def predict_files(self, paths, batch_size=32, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
        """float32 [len(paths), C] probabilities of image files (JPEG, PNG, GIF, BMP, WebP; any filesystem
        TensorFlow reads).

        DataError naming the first file that is missing, too large or not an image.
        """
        import tensorflow as tf

        from spml_tf.data import pipeline

        images = []
        for path in paths:
            data, problem = read_image_file(path, max_pixels)
            if problem is None:
                try:
                    images.append(pipeline.decode_and_resize(tf.constant(data), self.image_size, max_pixels).numpy())
                    continue
                except tf.errors.InvalidArgumentError:
                    problem = f"is not a decodable {image_limits.FORMATS} image"
            raise DataError(f"{path} {problem}")
        if not images:
            return np.zeros((0, len(self.class_names)), np.float32)
        return self.probabilities(np.stack(images), batch_size)

    def labels(self, probabilities):
        """For each row, the class names at or above the threshold, most probable first."""
        rows = []
        for row in np.asarray(probabilities):
            order = np.argsort(-row, kind="stable")
            rows.append([self.class_names[c] for c in order if row[c] >= self.threshold])
        return rows
