"""SPML losses as Keras Losses: labels in our encoding, logits in, per-example values out.

Each loss is one class, and the one place that knows it: its formula, its
name on the command line (`key`), the Config fields it takes (`hyperparameters`),
and what else training needs for it, which the trainer asks it for instead of
comparing names: full labels (`uses_full_labels`), a model that also reads the
example index (`training_model`), callbacks of its own (`callbacks`, e.g. APL).
`LOSSES` maps names to classes; `get(name, **hyperparameters)` builds one.

Label encoding (docs/method.md section 1): 1 annotated positive, 0 unannotated, -s an
APL negative pseudo-label whose soft target is s (0 <= s < 1). Only with
`--observed_negatives` (Cole et al.'s `num_neg`): -1 an annotated negative,
which every loss treats as a known negative, -log(1 - p).

Every `call()` returns the mean over classes of the per-entry terms, one value
per example; Keras's default `sum_over_batch_size` reduction then averages over
the batch, which equals the original's sum / (batch * C). Returning per-example
values (not a scalar) is what lets Keras scale the loss correctly across
replicas under a distribution strategy. All logs are taken in logit space,
log p = log_sigmoid(x) and log(1 - p) = log_sigmoid(-x): the exact formula,
finite for any logit, where the original code writes -log(p + 1e-5).
"""

import dataclasses

import keras
import tensorflow as tf

from spml_tf.errors import UsageError


def _log_p(logits):
    return tf.math.log_sigmoid(logits)


def _log_not_p(logits):
    return tf.math.log_sigmoid(-logits)


class SPMLLoss(keras.losses.Loss):
    """Base class: casts to float32 (also under mixed precision) and averages over classes.

    A subclass sets `key` and `hyperparameters`, writes `entry_terms` (and a
    `regularizer` if it has one), and overrides the training hooks it needs.
    """

    key = None  # the name of --loss
    hyperparameters = ()  # Config fields passed to __init__, by name
    uses_full_labels = False  # trains on the full training labels (the oracle), not the observed ones

    def __init__(self, name, **kwargs):
        super().__init__(name=name, dtype="float32", **kwargs)

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
        return -_log_not_p(logits)

    def regularizer(self, labels, logits):
        """A batch-level term added to every example's value (so the batch mean carries it once)."""
        return 0.0


class AssumeNegative(SPMLLoss):
    """AN: -log p on annotated positives, -log(1 - p) on everything else."""

    key = "an"

    def __init__(self, name="an", **kwargs):
        super().__init__(name=name, **kwargs)

    def entry_terms(self, labels, logits):
        return tf.where(labels == 1.0, -_log_p(logits), -_log_not_p(logits))


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
        return -(1.0 - self.ls_coef) * _log_not_p(logits) - self.ls_coef * _log_p(logits)

    def entry_terms(self, labels, logits):
        positive = -(1.0 - self.ls_coef) * _log_p(logits) - self.ls_coef * _log_not_p(logits)
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
        return tf.where(labels == 1.0, -_log_p(logits), -_log_not_p(logits) / (num_classes - 1.0))


def expected_positive_penalty(logits, expected_num_pos):
    """EPR's regulariser: (mean over the batch of sum_c p - k)^2 / C^2."""
    num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    mean_positives = tf.reduce_mean(tf.reduce_sum(tf.sigmoid(logits), axis=-1))
    return tf.square(mean_positives - expected_num_pos) / tf.square(num_classes)


class ExpectedPositiveRegularization(SPMLLoss):
    """EPR: -log p on positives only, plus a penalty pulling the predicted positive count to k.

    The penalty is a function of the whole batch; it is added to every
    example's value, so Keras's batch mean adds it exactly once. (Under a
    distribution strategy each replica computes it on its own share.)
    """

    key = "epr"
    hyperparameters = ("expected_num_pos",)

    def __init__(self, expected_num_pos, name="epr", **kwargs):
        super().__init__(name=name, **kwargs)
        self.expected_num_pos = float(expected_num_pos)

    def entry_terms(self, labels, logits):
        return tf.where(labels == 1.0, -_log_p(logits), 0.0)

    def regularizer(self, labels, logits):
        return expected_positive_penalty(logits, self.expected_num_pos)

    def get_config(self):
        return {**super().get_config(), "expected_num_pos": self.expected_num_pos}


class RegularizedOnlineLabelEstimation(SPMLLoss):
    """ROLE (Cole et al.): the classifier p and a per-example label estimator q teach each other.

    `y_pred` is [classifier logits | estimator logits] (2C columns; see
    models.with_label_estimator). Entry term
    0.5 (pos(p) + pos(q)) + 0.5 (BCE(p; stop_grad(q)) + BCE(q; stop_grad(p))),
    pos(x) = -log x on annotated positives only, plus 0.5 (EPR(p) + EPR(q)).
    """

    key = "role"
    hyperparameters = ("expected_num_pos",)

    def __init__(self, expected_num_pos, name="role", **kwargs):
        super().__init__(name=name, **kwargs)
        self.expected_num_pos = float(expected_num_pos)

    def training_model(self, classifier, observed_labels, seed):
        from spml_tf import models

        return models.with_label_estimator(classifier, observed_labels, seed)

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
        positive = tf.where(labels == 1.0, -_log_p(p_logits) - _log_p(q_logits), 0.0)
        q_target, p_target = tf.stop_gradient(q), tf.stop_gradient(p)
        cross_p = -q_target * _log_p(p_logits) - (1.0 - q_target) * _log_not_p(p_logits)
        cross_q = -p_target * _log_p(q_logits) - (1.0 - p_target) * _log_not_p(q_logits)
        return 0.5 * positive + 0.5 * (cross_p + cross_q)

    def get_config(self):
        return {**super().get_config(), "expected_num_pos": self.expected_num_pos}


class EntropyMaximization(SPMLLoss):
    """EM: -log p on positives, -alpha * H(p) on unannotated labels, 0 on pseudo-negatives."""

    key = "em"
    hyperparameters = ("alpha",)

    def __init__(self, alpha, name="em", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)

    def entropy(self, logits):
        # H(p) = -p log p - (1 - p) log(1 - p), written with log-sigmoids;
        # 1 - p as sigmoid(-x), which keeps its precision for large logits.
        return -tf.sigmoid(logits) * _log_p(logits) - tf.sigmoid(-logits) * _log_not_p(logits)

    def entry_terms(self, labels, logits):
        positive = -_log_p(logits)
        unannotated = -self.alpha * self.entropy(logits)
        return tf.where(labels == 1.0, positive, tf.where(labels == 0.0, unannotated, 0.0))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class EntropyMaximizationAPL(EntropyMaximization):
    """EM + APL: EM, plus beta * BCE(p; target s) on each pseudo-negative -s; APL makes the -s after each epoch."""

    key = "em_apl"
    hyperparameters = ("alpha", "beta")

    def __init__(self, alpha, beta, name="em_apl", **kwargs):
        super().__init__(alpha=alpha, name=name, **kwargs)
        self.beta = float(beta)

    @classmethod
    def check_config(cls, config):
        if config.warmup_epochs >= config.epochs:
            raise UsageError(f"--warmup_epochs={config.warmup_epochs} must be smaller than --epochs={config.epochs} "
                             "with --loss=em_apl, or APL never runs")

    def callbacks(self, context):
        from spml_tf import pseudo_label

        config = context.config
        return [pseudo_label.APLCallback(context.predictor, context.bank, context.train_eval_dataset,
                                         context.full_train_labels, config.warmup_epochs, config.epochs,
                                         config.neg_proportion)]

    def entry_terms(self, labels, logits):
        soft_target = tf.maximum(-labels, 0.0)  # labels -1 are replaced in call()
        pseudo_negative = -self.beta * (soft_target * _log_p(logits) + (1.0 - soft_target) * _log_not_p(logits))
        em = super().entry_terms(labels, logits)
        return tf.where(labels < 0.0, pseudo_negative, em)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


# Every loss, by its --loss name: the one list to extend.
LOSSES = {loss.key: loss for loss in (FullLabels, AssumeNegative, LabelSmoothing, WeakAssumeNegative,
                                      ExpectedPositiveRegularization, RegularizedOnlineLabelEstimation,
                                      EntropyMaximization, EntropyMaximizationAPL)}


def lookup(name):
    """The loss class called `name`; UsageError naming the known ones otherwise."""
    if name not in LOSSES:
        raise UsageError(f"--loss={name!r} is not one of {', '.join(LOSSES)}")
    return LOSSES[name]


def get(name, **hyperparameters):
    """A ready Loss by name, e.g. get("em_apl", alpha=0.2, beta=0.02), for any model's compile (ValueError for an
    unknown name)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](**hyperparameters)


def for_config(config):
    """The Loss a training Config asks for, with its hyper-parameters from the Config; UsageError if the Config
    contradicts it."""
    loss_class = lookup(config.loss)
    loss_class.check_config(config)
    return loss_class(**{field: getattr(config, field) for field in loss_class.hyperparameters})


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
    """

    def __init__(self, loss, bank, **kwargs):
        super().__init__(name=loss.name, dtype="float32", **kwargs)
        self.loss = loss
        self.bank = bank

    def call(self, y_true, y_pred):
        labels = self.bank.lookup(y_true)
        return self.loss.call(labels, y_pred)
