"""What every SPML loss shares: the Keras Loss base class, the loss of a step over the global batch, the
label-bank wrapper the trainer compiles with, the per-epoch schedule callback, and how a method declares its
hyper-parameters (the Config fields and flags they become).

A loss is one class, and the one place that knows it: its formula, its name
on the command line (`key`), the Config fields it takes (`hyperparameters`),
and what else training needs for it, which the trainer asks it for instead of
comparing names: full labels (`uses_full_labels`), a model that also reads the
example index (`training_model`), callbacks of its own (`callbacks`, e.g. APL).

Label encoding (docs/method.md section 1): 1 annotated positive, 0 unannotated, -s an
APL negative pseudo-label whose soft target is s (0 <= s < 1). Only with
`--observed_negatives` (Cole et al.'s `num_neg`): -1 an annotated negative,
which every loss treats as a known negative, -log(1 - p).

Every `call()` returns the mean over classes of the per-entry terms, one value
per example; the loss of a step is their sum over the GLOBAL batch divided by
its size (`global_mean`), which equals the original's sum / (batch * C), on one
device and on any number of replicas and workers, also when the last batch of
an epoch splits unevenly over them (6 + 5, or 1 + 0: a replica may get no
example). Keras's own reduction divides each replica's sum by that replica's
batch, which is the global mean only when the split is even. A batch-level
regulariser (EPR, ROLE) is computed from the global batch's statistics too.
All logs are taken in logit space,
log p = log_sigmoid(x) and log(1 - p) = log_sigmoid(-x): the exact formula,
finite for any logit, where the original code writes -log(p + 1e-5).

Imports only spml_tf.core (and Keras, TensorFlow, NumPy).
"""

import dataclasses

import keras
import tensorflow as tf

from spml_tf.core.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """A method's setting: a Config field of this name, and the training command's flag `--<name>`.

    `default` gives its type (float, int, or a pair of floats: a `first,last` list flag); `per_dataset` the
    value a dataset's preset starts from where it differs (the method module cites where each comes from);
    `valid` a test of a value, and `requirement` the words the error says when it fails.
    """

    name: str
    default: object
    help: str
    valid: object = None
    requirement: str = ""
    per_dataset: dict = dataclasses.field(default_factory=dict)

    def check(self, value):
        """UsageError when `value` is not valid for it."""
        if self.valid is not None and not self.valid(value):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            raise UsageError(f"--{self.name}={shown} {self.requirement}")


def log_p(logits):
    return tf.math.log_sigmoid(logits)


def log_not_p(logits):
    return tf.math.log_sigmoid(-logits)


def bce_with_logits(logits, targets):
    """torch's binary_cross_entropy_with_logits, per entry: -(t log p + (1 - t) log(1 - p))."""
    return -(targets * log_p(logits) + (1.0 - targets) * log_not_p(logits))


def sum_over_replicas(value):
    """`value` summed over every replica (and worker) of the step; itself on one device or outside a step. No
    gradient flows through it (callers give their gradients explicitly)."""
    value = tf.stop_gradient(value)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def global_mean(values):
    """The loss of a step from this replica's per-example `values`: their sum divided by the size of the global
    batch, so that the replicas' gradients, which the strategy sums, are the gradient of the global batch's mean.

    Its value is what Keras's loss tracker expects of a replica (its own mean over the replicas: the tracker
    weighs it by the replica's batch size), so the reported loss is the global mean too; only its gradient is
    that of sum / global size. On one device both are the batch's mean.
    """
    values = tf.cast(tf.reshape(values, [-1]), tf.float32)
    local_sum = tf.reduce_sum(values)
    local_size = tf.cast(tf.size(values), tf.float32)
    global_size = sum_over_replicas(local_size)
    context = tf.distribute.get_replica_context()
    replicas = 1.0 if context is None else float(context.num_replicas_in_sync)
    trained = tf.math.divide_no_nan(local_sum, global_size)
    reported = tf.math.divide_no_nan(local_sum, local_size * replicas)
    return trained + tf.stop_gradient(reported - trained)


class SPMLLoss(keras.losses.Loss):
    """Base class: casts to float32 (also under mixed precision) and averages over classes.

    A subclass sets `key` and `hyperparameters`, writes `entry_terms` (and a
    `regularizer` if it has one), and overrides the training hooks it needs.
    """

    key = None  # the name of --loss
    hyperparameters = ()  # Config fields passed to __init__, by name
    uses_full_labels = False  # trains on the full training labels (the oracle), not the observed ones
    takes_positives = False  # has call_with_positives: its own term for CLIP pseudo-positives (methods/vl.py)
    positives_rule = None  # the pseudo-positive rule of its authors ("vlpl", "aevlp"), if any

    def __init__(self, name, **kwargs):
        super().__init__(name=name, dtype="float32", **kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss of a step: `global_mean` of the per-example values (Keras's reduction when given sample
        weights or another reduction)."""
        if sample_weight is not None or self.reduction != "sum_over_batch_size":
            return super().__call__(y_true, y_pred, sample_weight)
        return global_mean(self.call(y_true, y_pred))

    @classmethod
    def check_config(cls, config):
        """UsageError if `config` cannot train this loss (a setting it contradicts)."""

    def training_model(self, classifier, observed_labels, seed):
        """The model `fit` trains: the classifier itself, unless the loss trains more (ROLE's label estimator)."""
        del observed_labels, seed
        return classifier

    def needs_example_index(self):
        """Whether the training model also takes the example index as an input (then the data must give it)."""
        return False

    def callbacks(self, context):
        """Keras callbacks the loss needs during training (a TrainingContext gives them what they use)."""
        del context
        return []

    def attach(self, bank):
        """Called in the strategy's scope when training builds the loss over its label bank: a loss that keeps
        variables of its own (LL-Cp's corrections) creates them here."""
        del bank

    def call_on_bank(self, labels, logits, index):
        """The per-example values of a training step: the labels gathered from the bank at `index`."""
        del index
        return self.call(labels, logits)

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true, tf.float32)
        logits = tf.cast(y_pred, tf.float32)
        terms = tf.where(labels == -1.0, self.negative_term(logits), self.entry_terms(labels, logits))
        return tf.reduce_mean(terms, axis=-1) + self.regularizer(labels, logits)

    def entry_terms(self, labels, logits):
        """The per-entry loss matrix (batch x classes) for labels 1, 0 and -s."""
        raise NotImplementedError

    def negative_term(self, logits):
        """The term of an annotated negative (-1)."""
        return -log_not_p(logits)

    def regularizer(self, labels, logits):
        """A batch-level term added to every example's value (so the global batch mean carries it once)."""
        return 0.0



class EpochSchedule(keras.callbacks.Callback):
    """Tells a loss the epoch (counted from 1) before each epoch starts: its schedule is a function of it, so a
    resumed run, which starts at the epoch it stopped at, needs no state."""

    def __init__(self, loss, num_epochs):
        super().__init__()
        self.loss, self.num_epochs = loss, num_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.loss.set_epoch(epoch + 1, self.num_epochs)


@dataclasses.dataclass(frozen=True)
class TrainingContext:
    """What a loss's callbacks may use: the run's config, the label bank, a predictor of the classifier, the
    training images without augmentation, and the full training labels (None when unknown)."""

    config: object
    bank: object
    predictor: object
    train_eval_dataset: object
    full_train_labels: object


class LabelBankLoss(keras.losses.Loss):
    """Wraps a SPML loss: `y_true` is the example index, the labels come from the bank.

    Gathering at step time (not in tf.data) is what makes every step see the
    bank's current values after an APL round, also with `.repeat()`, `.cache()`
    or prefetching. Keras converts `y_true` to float32 before `call`; indices
    are exact in float32 below 2**24, which LabelBank checks.

    `positives` (optional, float32 N x C, 1 = a CLIP pseudo-positive; methods/vl.py) is gathered by the same
    index. A loss that `takes_positives` gets them through `call_with_positives`; any other loss sees each
    pseudo-positive on an unannotated entry (0, or an APL -s) as a positive label (1) of its own.
    """

    def __init__(self, loss, bank, positives=None, **kwargs):
        super().__init__(name=loss.name, dtype="float32", **kwargs)
        self.loss = loss
        self.bank = bank
        if positives is not None and not isinstance(positives, (tf.Variable, tf.Tensor)):
            positives = tf.constant(positives, tf.float32)
        if positives is not None and tuple(positives.shape) != bank.shape:
            raise ValueError(f"positives have shape {tuple(positives.shape)}, the label bank {bank.shape}")
        self.positives = positives

    def call(self, y_true, y_pred):
        labels = self.bank.lookup(y_true)
        if self.positives is None:
            return global_mean(self.loss.call_on_bank(labels, y_pred, y_true))
        positives = tf.gather(self.positives, tf.cast(tf.reshape(y_true, [-1]), tf.int32))
        if self.loss.takes_positives:
            return global_mean(self.loss.call_with_positives(labels, y_pred, positives))
        unannotated = (labels > -1.0) & (labels < 1.0)
        labels = tf.where((positives > 0.0) & unannotated, 1.0, labels)
        return global_mean(self.loss.call_on_bank(labels, y_pred, y_true))
