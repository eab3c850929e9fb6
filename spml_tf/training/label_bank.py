"""The training label matrix as a non-trainable variable that losses read at step time."""

import numpy as np
import tensorflow as tf

from spml_tf.core.errors import DataError

# Keras hands `y_true` (the example index) to the loss as float32, which
# represents every integer exactly only up to 2**24.
MAX_EXAMPLES = 2**24


class LabelBank:
    """N x C labels in the encoding of docs/method.md section 1 (1, 0, -s; -1 observed negative), indexed by
    `example/index`.

    Create it under the distribution strategy's scope, so each replica holds a
    copy; `assign` from a callback (cross-replica context) updates all copies.
    """

    def __init__(self, labels):
        labels = np.asarray(labels, dtype=np.float32)
        check_encoding(labels, "initial label bank")
        if labels.shape[0] >= MAX_EXAMPLES:
            raise DataError(f"{labels.shape[0]} training examples: the label bank supports fewer than {MAX_EXAMPLES}")
        self.variable = tf.Variable(labels, trainable=False, name="label_bank")

    @property
    def shape(self):
        return tuple(self.variable.shape)

    def lookup(self, index):
        """Rows of the bank for a batch of example indices (any numeric dtype)."""
        index = tf.cast(tf.reshape(index, [-1]), tf.int32)
        return tf.gather(self.variable, index)

    def assign(self, labels):
        labels = np.asarray(labels, dtype=np.float32)
        if labels.shape != self.shape:
            raise ValueError(f"label bank has shape {self.shape}, got {labels.shape}")
        check_encoding(labels, "label bank update")
        self.variable.assign(labels)

    def numpy(self):
        return self.variable.numpy()


def check_encoding(labels, what):
    """Raises DataError unless `labels` is a matrix of values 1, 0, -1 or -s with 0 <= s < 1."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2:
        raise DataError(f"{what}: expected a matrix (examples x classes), got shape {labels.shape}")
    valid = (labels == 1.0) | ((labels <= 0.0) & (labels >= -1.0))  # also False for nan
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        raise DataError(
            f"{what}: value {float(labels[row, col])!r} at example {row}, class {col} is outside the encoding "
            "{-1, -s (0 <= s < 1), 0, 1}"
        )
