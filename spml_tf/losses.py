"""SPML losses as Keras Losses: labels in the SPEC encoding, logits in, per-example values out.

Label encoding (SPEC section 1): 1 annotated positive, 0 unannotated, -s an
APL negative pseudo-label whose soft target is s.

Every `call()` returns the mean over classes of the per-entry terms, one value
per example; Keras's default `sum_over_batch_size` reduction then averages over
the batch, which equals the original's sum / (batch * C). Returning per-example
values (not a scalar) is what lets Keras scale the loss correctly across
replicas under a distribution strategy. All logs are taken in logit space,
log p = log_sigmoid(x) and log(1 - p) = log_sigmoid(-x): the exact formula,
finite for any logit, where the original code writes -log(p + 1e-5).
"""

import keras
import tensorflow as tf


def _log_p(logits):
    return tf.math.log_sigmoid(logits)


def _log_not_p(logits):
    return tf.math.log_sigmoid(-logits)


class SPMLLoss(keras.losses.Loss):
    """Base class: casts to float32 (also under mixed precision) and averages over classes."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, dtype="float32", **kwargs)

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true, tf.float32)
        logits = tf.cast(y_pred, tf.float32)
        return tf.reduce_mean(self.entry_terms(labels, logits), axis=-1)

    def entry_terms(self, labels, logits):
        """The per-entry loss matrix (batch x classes)."""
        raise NotImplementedError


class AssumeNegative(SPMLLoss):
    """AN: -log p on annotated positives, -log(1 - p) on everything else."""

    def __init__(self, name="an", **kwargs):
        super().__init__(name=name, **kwargs)

    def entry_terms(self, labels, logits):
        return tf.where(labels == 1.0, -_log_p(logits), -_log_not_p(logits))


class FullLabels(AssumeNegative):
    """The oracle: the AN formula (plain BCE) fed the full labels instead of observed ones."""

    def __init__(self, name="full", **kwargs):
        super().__init__(name=name, **kwargs)


class EntropyMaximization(SPMLLoss):
    """EM: -log p on positives, -alpha * H(p) on unannotated labels, 0 on pseudo-negatives."""

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
    """EM + APL: EM, plus beta * BCE(p; target s) on each pseudo-negative -s."""

    def __init__(self, alpha, beta, name="em_apl", **kwargs):
        super().__init__(alpha=alpha, name=name, **kwargs)
        self.beta = float(beta)

    def entry_terms(self, labels, logits):
        soft_target = tf.maximum(-labels, 0.0)
        pseudo_negative = -self.beta * (soft_target * _log_p(logits) + (1.0 - soft_target) * _log_not_p(logits))
        em = super().entry_terms(labels, logits)
        return tf.where(labels < 0.0, pseudo_negative, em)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


_REGISTRY = {
    "full": FullLabels,
    "an": AssumeNegative,
    "em": EntropyMaximization,
    "em_apl": EntropyMaximizationAPL,
}


def get(name, **hyperparameters):
    """A ready Loss by name, e.g. get("em_apl", alpha=0.2, beta=0.02)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**hyperparameters)


def from_config(config):
    """The Loss a training Config asks for, with its hyper-parameters."""
    hyperparameters = {"em": {"alpha": config.alpha}, "em_apl": {"alpha": config.alpha, "beta": config.beta}}
    return get(config.loss, **hyperparameters.get(config.loss, {}))


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
