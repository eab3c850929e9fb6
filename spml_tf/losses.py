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
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from spml_tf.errors import UsageError


def _log_p(logits):
    return tf.math.log_sigmoid(logits)


def _sum_over_replicas(value):
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
    global_size = _sum_over_replicas(local_size)
    context = tf.distribute.get_replica_context()
    replicas = 1.0 if context is None else float(context.num_replicas_in_sync)
    trained = tf.math.divide_no_nan(local_sum, global_size)
    reported = tf.math.divide_no_nan(local_sum, local_size * replicas)
    return trained + tf.stop_gradient(reported - trained)


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
        return -_log_not_p(logits)

    def regularizer(self, labels, logits):
        """A batch-level term added to every example's value (so the global batch mean carries it once)."""
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
    """EPR's regulariser, (mean over the global batch of sum_c p - k)^2 / C^2, as a value per example whose
    global_mean is the penalty, with the penalty's gradient.

    Each example's value is the penalty M's square term itself, plus 2 (M - k) / C^2 times its own sum_c p with
    the value of that product taken out: summed over the global batch of N and divided by N, the value is the
    penalty and the gradient 2 (M - k) / C^2 * dM, exactly. M comes from every replica's sums, so each replica's
    share of the batch pulls on the global count.
    """
    num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    positives = tf.reduce_sum(tf.sigmoid(logits), axis=-1)  # [B]: sum_c p of each example
    count = _sum_over_replicas(tf.cast(tf.size(positives), tf.float32))
    mean_positives = tf.math.divide_no_nan(_sum_over_replicas(tf.reduce_sum(positives)), count)
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


def _check_apl_warmup(config):
    if config.warmup_epochs >= config.epochs:
        raise UsageError(f"--warmup_epochs={config.warmup_epochs} must be smaller than --epochs={config.epochs} "
                         f"with --loss={config.loss}, or APL never runs")


def _apl_callback(context):
    from spml_tf import pseudo_label

    config = context.config
    return pseudo_label.APLCallback(context.predictor, context.bank, context.train_eval_dataset,
                                    context.full_train_labels, config.warmup_epochs, config.epochs,
                                    config.neg_proportion)


class EntropyMaximizationAPL(EntropyMaximization):
    """EM + APL: EM, plus beta * BCE(p; target s) on each pseudo-negative -s; APL makes the -s after each epoch."""

    key = "em_apl"
    hyperparameters = ("alpha", "beta")

    def __init__(self, alpha, beta, name="em_apl", **kwargs):
        super().__init__(alpha=alpha, name=name, **kwargs)
        self.beta = float(beta)

    @classmethod
    def check_config(cls, config):
        _check_apl_warmup(config)

    def callbacks(self, context):
        return [_apl_callback(context)]

    def entry_terms(self, labels, logits):
        soft_target = tf.maximum(-labels, 0.0)  # labels -1 are replaced in call()
        pseudo_negative = -self.beta * (soft_target * _log_p(logits) + (1.0 - soft_target) * _log_not_p(logits))
        em = super().entry_terms(labels, logits)
        return tf.where(labels < 0.0, pseudo_negative, em)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


class EpochSchedule(keras.callbacks.Callback):
    """Tells a loss the epoch (counted from 1) before each epoch starts: its schedule is a function of it, so a
    resumed run, which starts at the epoch it stopped at, needs no state."""

    def __init__(self, loss, num_epochs):
        super().__init__()
        self.loss, self.num_epochs = loss, num_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.loss.set_epoch(epoch + 1, self.num_epochs)


def _bce_with_logits(logits, targets):
    """torch's binary_cross_entropy_with_logits, per entry: -(t log p + (1 - t) log(1 - p))."""
    return -(targets * _log_p(logits) + (1.0 - targets) * _log_not_p(logits))


def ll_rejection_rate(epoch, delta):
    """LL's share of a batch's entries modified in `epoch` (from 1): the authors' clean_rate, which starts at 1
    and loses delta / 100 after every epoch, accumulated in float64 as their code does (train.py:
    `P['clean_rate'] -= P['delta_rel']`), so that ceil(B C (1 - clean_rate)) is their k to the last unit."""
    clean_rate, step = 1.0, delta / 100.0
    for _ in range(epoch - 1):
        clean_rate -= step
    return 1.0 - clean_rate


class LargeLoss(SPMLLoss):
    """LL (Kim et al., CVPR 2022; docs/method.md section 7.1): assume-negative BCE in which, from the second epoch
    on, the unannotated entries with the largest losses in the batch are rejected (LL-R: loss 0), corrected to
    positive for this batch (LL-Ct: BCE with target 1), or corrected for good (LL-Cp: the bank's label becomes 1).

    The batch's B x C matrix of unannotated losses (0 elsewhere) is ranked as one list; the threshold is its k-th
    largest value, and every entry at or above it is modified (ties included, `>=` as in BridgeGap's code). k is
    ceil(B C r): r grows by delta % per epoch for R and Ct (ll_rejection_rate), and is a constant delta % from
    the second epoch for Cp (the paper; LargeLossMatters as released compares with `is 'LL-Cp'`, which is False,
    so its Cp runs Ct's schedule: use ll_ct for that behaviour). Under a distribution strategy the ranking runs
    over the global batch (an all-gather), so it equals one device's. Mean over B x C, as the authors'.
    """

    key = None
    scheme = None  # "reject", "correct" or "permanent"
    hyperparameters = ("ll_delta",)

    def __init__(self, ll_delta, name=None, **kwargs):
        super().__init__(name=name or self.key, **kwargs)
        self.ll_delta = float(ll_delta)
        self.rate = tf.Variable(0.0, dtype=tf.float64, trainable=False, name=f"{self.key}_rate")
        self.corrections = None

    def set_epoch(self, epoch, num_epochs=None):
        if self.scheme == "permanent":
            rate = self.ll_delta / 100.0 if epoch >= 2 else 0.0
        else:
            rate = ll_rejection_rate(epoch, self.ll_delta)
        self.rate.assign(rate)

    def callbacks(self, context):
        return [EpochSchedule(self, context.config.epochs)]

    def modified(self, labels, losses):
        """Boolean [B, C]: the entries at or above the k-th largest unannotated loss of the (global) batch."""
        unannotated = tf.where(labels == 0.0, losses, 0.0)
        everything = unannotated
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            everything = context.all_gather(unannotated, axis=0)
        flat = tf.reshape(everything, [-1])
        size = tf.size(flat)
        k = tf.minimum(tf.cast(tf.math.ceil(tf.cast(size, tf.float64) * self.rate), tf.int32), size)
        # The k-th largest value: a full sort, whose shape is static (top_k's k is not, which XLA refuses).
        threshold = tf.gather(tf.sort(flat, direction="DESCENDING"), tf.maximum(k, 1) - 1)
        return tf.logical_and(k > 0, unannotated >= tf.stop_gradient(threshold))

    def entry_losses(self, labels, logits):
        observed = tf.cast(labels == 1.0, tf.float32)
        losses = _bce_with_logits(logits, observed)
        modified = self.modified(labels, losses)
        if self.scheme == "reject":
            terms = tf.where(modified, 0.0, losses)
        else:
            terms = tf.where(modified, _bce_with_logits(logits, 1.0 - observed), losses)
        return terms, modified

    def call(self, y_true, y_pred):
        terms, _ = self.entry_losses(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32))
        return tf.reduce_mean(terms, axis=-1)

    def get_config(self):
        return {**super().get_config(), "ll_delta": self.ll_delta}


class LargeLossRejection(LargeLoss):
    key = "ll_r"
    scheme = "reject"


class LargeLossCorrectionTemporary(LargeLoss):
    key = "ll_ct"
    scheme = "correct"


class LargeLossCorrectionPermanent(LargeLoss):
    """LL-Cp: the entries corrected in a step become annotated positives in the label bank.

    Each replica marks its corrections in a variable of its own (summed when read); at the end of the epoch
    they are written into the bank, before the checkpoint saves it. Every example is seen once per epoch, so
    this equals the authors' immediate write, which their data loader sees from the next epoch on.
    """

    key = "ll_cp"
    scheme = "permanent"

    def attach(self, bank):
        self.bank = bank
        self.corrections = tf.Variable(tf.zeros(bank.shape, tf.float32), trainable=False, name="ll_cp_corrections",
                                       synchronization=tf.VariableSynchronization.ON_READ,
                                       aggregation=tf.VariableAggregation.SUM)

    def call_on_bank(self, labels, logits, index):
        terms, modified = self.entry_losses(labels, logits)
        if self.corrections is not None:
            rows = tf.cast(tf.reshape(index, [-1]), tf.int32)
            # This replica's copy (variables synchronised on read have no scatter ops).
            marked = tf.tensor_scatter_nd_max(self.corrections.read_value(), rows[:, None],
                                              tf.cast(modified, tf.float32))
            self.corrections.assign(marked)
        return tf.reduce_mean(terms, axis=-1)

    def callbacks(self, context):
        return [EpochSchedule(self, context.config.epochs), PermanentCorrections(self)]

    def apply_corrections(self):
        """Writes the epoch's corrections into the bank (unannotated entries only) and clears them; returns how
        many labels became positive."""
        labels = self.bank.numpy()
        corrected = (self.corrections.read_value().numpy() > 0) & (labels == 0)
        if corrected.any():
            self.bank.assign(np.where(corrected, 1.0, labels))
        self.corrections.assign(tf.zeros(self.bank.shape, tf.float32))
        return int(corrected.sum())


class PermanentCorrections(keras.callbacks.Callback):
    """LL-Cp: at the end of each epoch the corrections go into the label bank (which the checkpoint saves)."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def on_epoch_end(self, epoch, logs=None):
        count = self.loss.apply_corrections()
        if logs is not None:
            logs["ll_corrected_labels"] = count


def gr_schedule(epoch, num_epochs, w, b, mu, sigma, linear_init=0):
    """GR's (w, b, mu, sigma) in `epoch` (from 1), as the authors' train.py computes them at each epoch's start:
    w and b move by max(e - n - 1, 0) / (T - n) of the way from first to last, mu and sigma by
    max(e - n, 0) / (T - n) (n = linear_init, 0 in their defaults; so w, b never reach their last value)."""
    n, span = linear_init, num_epochs - linear_init
    early, late = max(epoch - n - 1, 0) / span, max(epoch - n, 0) / span
    return (w[0] + (w[1] - w[0]) * early, b[0] + (b[1] - b[0]) * early,
            mu[0] + (mu[1] - mu[0]) * late, sigma[0] + (sigma[1] - sigma[0]) * late)


class GeneralizedRobust(SPMLLoss):
    """GR loss (IJCAI 2024; docs/method.md section 7.3): -log p on positives; on unannotated entries
    v(p) [k(p) L1(p) + (1 - k(p)) L2(p)], L1 = (1 - p^q2) / q2 (towards positive), L2 = (1 - (1 - p)^q3) / q3
    (towards negative), k = sigmoid(w p + b), v = exp(-(p - mu)^2 / (2 sigma^2)), with k and v computed on p
    without gradient and w, b, mu, sigma moving over the epochs (gr_schedule). The authors write -log(p + 1e-7)
    for positives; here -log_sigmoid(x), the same to 1e-7 wherever p > 1e-5.
    """

    key = "gr"
    hyperparameters = ("gr_w", "gr_b", "gr_mu", "gr_sigma", "gr_q")

    def __init__(self, gr_w=(0.0, 2.0), gr_b=(-2.0, -2.0), gr_mu=(0.5, 0.8), gr_sigma=(2.0, 0.5),
                 gr_q=(0.01, 1.0), name=None, **kwargs):
        super().__init__(name=name or self.key, **kwargs)
        self.gr_w, self.gr_b, self.gr_mu, self.gr_sigma, self.gr_q = (
            tuple(float(v) for v in pair) for pair in (gr_w, gr_b, gr_mu, gr_sigma, gr_q))
        # Until set_epoch (EpochSchedule calls it before every epoch of a run): the authors' values for a
        # one-epoch run, (w_0, b_0, mu_T, sigma_T).
        self.schedule = tf.Variable(gr_schedule(1, 1, self.gr_w, self.gr_b, self.gr_mu, self.gr_sigma),
                                    dtype=tf.float32, trainable=False, name=f"{self.key}_schedule")

    def set_epoch(self, epoch, num_epochs):
        self.schedule.assign(gr_schedule(epoch, num_epochs, self.gr_w, self.gr_b, self.gr_mu, self.gr_sigma))

    def callbacks(self, context):
        return [EpochSchedule(self, context.config.epochs)]

    def unannotated_term(self, logits):
        w, b, mu, sigma = tf.unstack(self.schedule)
        q2, q3 = self.gr_q
        p = tf.sigmoid(logits)
        fixed = tf.stop_gradient(p)
        k = tf.sigmoid(w * fixed + b)
        v = tf.exp(-0.5 * tf.square((fixed - mu) / sigma))
        towards_positive = (1.0 - tf.pow(p, q2)) / q2
        towards_negative = (1.0 - tf.pow(tf.sigmoid(-logits), q3)) / q3
        return v * (k * towards_positive + (1.0 - k) * towards_negative)

    def entry_terms(self, labels, logits):
        return tf.where(labels == 1.0, -_log_p(logits),
                        tf.where(labels == 0.0, self.unannotated_term(logits), 0.0))

    def get_config(self):
        return {**super().get_config(), **{name: list(getattr(self, name)) for name in self.hyperparameters}}


class GeneralizedRobustAPL(GeneralizedRobust):
    """GR + APL (a combination no paper reports): GR, plus beta * BCE(p; target s) on APL's pseudo-negatives -s."""

    key = "gr_apl"
    hyperparameters = GeneralizedRobust.hyperparameters + ("beta",)

    def __init__(self, beta=0.02, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)

    @classmethod
    def check_config(cls, config):
        _check_apl_warmup(config)

    def callbacks(self, context):
        return super().callbacks(context) + [_apl_callback(context)]

    def entry_terms(self, labels, logits):
        soft_target = tf.maximum(-labels, 0.0)
        pseudo_negative = self.beta * _bce_with_logits(logits, soft_target)
        return tf.where(labels < 0.0, pseudo_negative, super().entry_terms(labels, logits))

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


# Every loss, by its --loss name: the one list to extend.
LOSSES = {loss.key: loss for loss in (FullLabels, AssumeNegative, LabelSmoothing, WeakAssumeNegative,
                                      ExpectedPositiveRegularization, RegularizedOnlineLabelEstimation,
                                      EntropyMaximization, EntropyMaximizationAPL, LargeLossRejection,
                                      LargeLossCorrectionTemporary, LargeLossCorrectionPermanent,
                                      GeneralizedRobust, GeneralizedRobustAPL)}


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
        return global_mean(self.loss.call_on_bank(labels, y_pred, y_true))
