"""Cole et al., "Multi-Label Learning from Single Positive Labels" (CVPR 2021): the oracle and the baselines
(docs/method.md section 2): full labels, AN, AN-LS, WAN, EPR, and ROLE with its label estimator.

Code read: elijahcole/single-positive-multi-label (losses.py, models.py). Imports spml_tf.methods.base and
spml_tf.core only.
"""

import keras
import numpy as np
import tensorflow as tf

from spml_tf.methods.base import Hyperparameter, SPMLLoss, log_not_p, log_p, sum_over_replicas

HYPERPARAMETERS = (
    Hyperparameter("ls_coef", 0.1, "an_ls: label smoothing coefficient.", lambda v: 0 <= v < 0.5,
                   "must be in [0, 0.5)"),
    # k, the mean positives per image that EPR and ROLE assume: Cole et al.'s values (their config), and on the
    # embedded digits the true mean (2 to 6 classes per image, uniformly); a user's own data starts from VOC's.
    Hyperparameter("expected_num_pos", 1.5, "epr, role: expected number of positives per image (k).",
                   lambda v: v > 0, "must be positive",
                   per_dataset=dict(voc=1.5, coco=2.9, nuswide=1.9, cub=31.4, custom=1.5, digits=4.0)),
)

class AssumeNegative(SPMLLoss):
    """AN: -log p on annotated positives, -log(1 - p) on everything else."""

    key = "an"

    def __init__(self, name="an", **kwargs):
        super().__init__(name=name, **kwargs)

    def entry_terms(self, labels, logits):
        return tf.where(labels == 1.0, -log_p(logits), -log_not_p(logits))


class FullLabels(AssumeNegative):
    """The oracle: the AN formula (plain BCE) fed the full labels instead of observed ones."""

    key = "full"
    uses_full_labels = True

    def __init__(self, name="full", **kwargs):
        super().__init__(name=name, **kwargs)


class LabelSmoothing(SPMLLoss):
    """AN-LS: assume negative with label smoothing e: targets 1 - e and e instead of 1 and 0."""

    key = "an_ls"
    hyperparameters = ("ls_coef",)

    def __init__(self, ls_coef=0.1, name="an_ls", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ls_coef = float(ls_coef)

    def negative_term(self, logits):
        return -(1.0 - self.ls_coef) * log_not_p(logits) - self.ls_coef * log_p(logits)

    def entry_terms(self, labels, logits):
        positive = -(1.0 - self.ls_coef) * log_p(logits) - self.ls_coef * log_not_p(logits)
        return tf.where(labels == 1.0, positive, self.negative_term(logits))

    def get_config(self):
        return {**super().get_config(), "ls_coef": self.ls_coef}


class WeakAssumeNegative(SPMLLoss):
    """WAN: -log p on positives, -log(1 - p) / (C - 1) on unannotated labels."""

    key = "wan"

    def __init__(self, name="wan", **kwargs):
        super().__init__(name=name, **kwargs)

    def entry_terms(self, labels, logits):
        num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
        return tf.where(labels == 1.0, -log_p(logits), -log_not_p(logits) / (num_classes - 1.0))


def expected_positive_penalty(logits, expected_num_pos):
    """EPR's regulariser, (mean over the global batch of sum_c p - k)^2 / C^2, as a value per example whose
    global_mean is the penalty, with the penalty's gradient.

    Each example's value is the penalty M's square term itself, plus 2 (M - k) / C^2 times its own sum_c p with
    the value of that product taken out: summed over the global batch of N and divided by N, the value is the
    penalty and the gradient 2 (M - k) / C^2 * dM, exactly. M comes from every replica's sums, so each replica's
    share of the batch pulls on the global count.
    """
    num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    positives = tf.reduce_sum(tf.sigmoid(logits), axis=-1)  # [B]: sum_c p of each example
    count = sum_over_replicas(tf.cast(tf.size(positives), tf.float32))
    mean_positives = tf.math.divide_no_nan(sum_over_replicas(tf.reduce_sum(positives)), count)
    penalty = tf.square(mean_positives - expected_num_pos) / tf.square(num_classes)
    slope = 2.0 * (mean_positives - expected_num_pos) / tf.square(num_classes)
    return penalty + slope * (positives - tf.stop_gradient(positives))


class ExpectedPositiveRegularization(SPMLLoss):
    """EPR: -log p on positives only, plus a penalty pulling the predicted positive count to k.

    The penalty is a function of the whole global batch; it is added to every
    example's value, so the batch mean adds it exactly once (expected_positive_penalty).
    """

    key = "epr"
    hyperparameters = ("expected_num_pos",)

    def __init__(self, expected_num_pos, name="epr", **kwargs):
        super().__init__(name=name, **kwargs)
        self.expected_num_pos = float(expected_num_pos)

    def entry_terms(self, labels, logits):
        return tf.where(labels == 1.0, -log_p(logits), 0.0)

    def regularizer(self, labels, logits):
        return expected_positive_penalty(logits, self.expected_num_pos)

    def get_config(self):
        return {**super().get_config(), "expected_num_pos": self.expected_num_pos}


class RegularizedOnlineLabelEstimation(SPMLLoss):
    """ROLE (Cole et al.): the classifier p and a per-example label estimator q teach each other.

    `y_pred` is [classifier logits | estimator logits] (2C columns; see
    with_label_estimator). Entry term
    0.5 (pos(p) + pos(q)) + 0.5 (BCE(p; stop_grad(q)) + BCE(q; stop_grad(p))),
    pos(x) = -log x on annotated positives only, plus 0.5 (EPR(p) + EPR(q)).
    """

    key = "role"
    hyperparameters = ("expected_num_pos",)

    def __init__(self, expected_num_pos, name="role", **kwargs):
        super().__init__(name=name, **kwargs)
        self.expected_num_pos = float(expected_num_pos)

    def training_model(self, classifier, observed_labels, seed):
        return with_label_estimator(classifier, observed_labels, seed)

    def needs_example_index(self):
        return True

    @staticmethod
    def split(logits):
        return tf.split(logits, 2, axis=-1)

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true, tf.float32)
        p_logits, q_logits = self.split(tf.cast(y_pred, tf.float32))
        terms = self.entry_terms(labels, p_logits, q_logits)
        # Annotated negatives are known for both: -log(1 - p) and -log(1 - q).
        negative = 0.5 * (self.negative_term(p_logits) + self.negative_term(q_logits))
        terms = tf.where(labels == -1.0, negative, terms)
        penalty = 0.5 * (expected_positive_penalty(p_logits, self.expected_num_pos)
                         + expected_positive_penalty(q_logits, self.expected_num_pos))
        return tf.reduce_mean(terms, axis=-1) + penalty

    def entry_terms(self, labels, p_logits, q_logits):
        p, q = tf.sigmoid(p_logits), tf.sigmoid(q_logits)
        positive = tf.where(labels == 1.0, -log_p(p_logits) - log_p(q_logits), 0.0)
        q_target, p_target = tf.stop_gradient(q), tf.stop_gradient(p)
        cross_p = -q_target * log_p(p_logits) - (1.0 - q_target) * log_not_p(p_logits)
        cross_q = -p_target * log_p(q_logits) - (1.0 - p_target) * log_not_p(q_logits)
        return 0.5 * positive + 0.5 * (cross_p + cross_q)

    def get_config(self):
        return {**super().get_config(), "expected_num_pos": self.expected_num_pos}




# ROLE's label estimator: logit(0.995) at annotated positives, logit(0.005) at
# annotated negatives, uniform in +-logit(0.6) elsewhere (Cole et al.).
_ESTIMATOR_POSITIVE_LOGIT = float(np.log(0.995 / 0.005))
_ESTIMATOR_INIT_RANGE = float(np.log(0.6 / 0.4))


class LabelEstimator(keras.layers.Layer):
    """ROLE's trainable N x C label logits, looked up by example index.

    Stored divided by `lr_multiplier` and multiplied back in `call`: Adam's
    step is invariant to the gradient's scale, so the logits move
    `lr_multiplier` times faster than the classifier's weights, which is
    Adam with a `lr_multiplier` x learning rate (up to Adam's epsilon),
    without a second optimizer. Used for training only; never saved.
    """

    def __init__(self, initial_logits, lr_multiplier=10.0, **kwargs):
        super().__init__(**kwargs)
        self.lr_multiplier = float(lr_multiplier)
        initial = np.asarray(initial_logits, dtype=np.float32) / self.lr_multiplier
        self.scaled_logits = self.add_weight(shape=initial.shape, initializer="zeros", name="scaled_logits")
        self.scaled_logits.assign(initial)

    def call(self, index):
        index = keras.ops.cast(keras.ops.reshape(index, [-1]), "int32")
        return self.lr_multiplier * keras.ops.take(self.scaled_logits, index, axis=0)


def initial_estimator_logits(observed, seed):
    """The initialisation (docs/method.md section 2) of ROLE's label estimator from the observed label matrix."""
    rng = np.random.RandomState(seed)
    logits = rng.uniform(-_ESTIMATOR_INIT_RANGE, _ESTIMATOR_INIT_RANGE, size=observed.shape)
    logits = np.where(observed == -1, -_ESTIMATOR_POSITIVE_LOGIT, logits)
    return np.where(observed == 1, _ESTIMATOR_POSITIVE_LOGIT, logits).astype(np.float32)


def with_label_estimator(classifier, observed, seed, lr_multiplier=10.0):
    """ROLE's training model: (image, example index) -> [classifier logits | estimator logits]."""
    image = keras.Input(shape=classifier.input_shape[1:], name="image")
    index = keras.Input(shape=(), dtype="int64", name="index")
    estimator = LabelEstimator(initial_estimator_logits(observed, seed), lr_multiplier, name="label_estimator")
    outputs = keras.layers.Concatenate(name="classifier_and_estimator")([classifier(image), estimator(index)])
    return keras.Model([image, index], outputs, name="role_trainer")


LOSSES = (FullLabels, AssumeNegative, LabelSmoothing, WeakAssumeNegative, ExpectedPositiveRegularization,
          RegularizedOnlineLabelEstimation)
