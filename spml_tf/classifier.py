"""`from spml_tf.classifier import Classifier`, as the README shows: the class lives in spml_tf/serving/classifier.py."""

from spml_tf.serving.classifier import Classifier, load_run  # noqa: F401
