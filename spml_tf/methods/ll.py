"""LL, "Large Loss Matters in Weakly Supervised Multi-Label Classification" (Kim et al., CVPR 2022): LL-R,
LL-Ct and LL-Cp (docs/method.md section 7.1), the callback that writes LL-Cp's corrections, and the authors'
protocols per dataset, with BoostLU's (Kim et al., CVPR 2023) for `--head=boostlu`.

Code read: snucml/LargeLossMatters, youngwk/BridgeGapExplanationPAMC. Imports spml_tf.methods.base and
spml_tf.core only.
"""

import keras
import numpy as np
import tensorflow as tf

from spml_tf.methods.base import EpochSchedule, Hyperparameter, SPMLLoss, bce_with_logits

HYPERPARAMETERS = (
    Hyperparameter("ll_delta", 0.2, "ll_r, ll_ct, ll_cp: percent of a batch's label entries rejected or corrected "
                   "more each epoch (ll_cp: a constant percent from epoch 2).", lambda v: 0 <= v <= 100,
                   "must be a percentage in [0, 100]"),
)

# LL (snucml/LargeLossMatters, config.py and train.py): batch 16, 10 epochs, the head at 10x the learning rate
# (`lr_mult`), Adam; stop when val mAP falls more than 3 below its best (train.py: `bestmap_val - map_val > 3`).
# Per dataset the optimizer, learning rate and delta are the first author's answer in that repository's issue
# #4 (the code has no per-dataset values): VOC SGD 5e-3 (momentum 0.9, weight decay 1e-3: config.py / train.py),
# COCO and NUS-WIDE Adam 1e-5, CUB Adam 7.5e-5; delta R / Ct / Cp: VOC 0.2 / 0.2 / 0.1, COCO and NUS-WIDE
# 0.4 / 0.2 / 0.2, CUB 0.4 / 0.4 / 0.2.
_LL = dict(batch_size=16, epochs=10, head_lr_mult=10.0, max_map_drop=3.0, patience=10)  # no patience rule
_LL_DATA = {
    "voc": dict(optimizer="sgd", learning_rate=5e-3, momentum=0.9, weight_decay=1e-3),
    "coco": dict(learning_rate=1e-5),
    "nuswide": dict(learning_rate=1e-5),
    "cub": dict(learning_rate=7.5e-5),
}
_LL_DELTA = {"ll_r": dict(voc=0.2, coco=0.4, nuswide=0.4, cub=0.4),
             "ll_ct": dict(voc=0.2, coco=0.2, nuswide=0.2, cub=0.4),
             "ll_cp": dict(voc=0.1, coco=0.2, nuswide=0.2, cub=0.2)}
# BoostLU (youngwk/BridgeGapExplanationPAMC, config.py): the same for every dataset: Adam 1e-5, batch 16,
# 10 epochs, lr_mult 10, alpha 5, delta R / Ct / Cp 0.5 / 0.2 / 0.1, no early stopping.
_BOOSTLU = dict(optimizer="adam", learning_rate=1e-5, batch_size=16, epochs=10, head_lr_mult=10.0,
                boostlu_alpha=5.0, max_map_drop=0.0, patience=10)
_BOOSTLU_DELTA = {"ll_r": 0.5, "ll_ct": 0.2, "ll_cp": 0.1}


def protocol(loss, head, dataset):
    """The Config fields the authors' protocol of `loss` (with `head`) sets on one of the paper's datasets."""
    if loss not in _LL_DELTA:
        return {}
    if head == "boostlu":
        return {**_BOOSTLU, "ll_delta": _BOOSTLU_DELTA[loss]}
    return {**_LL, **_LL_DATA[dataset], "ll_delta": _LL_DELTA[loss][dataset]}

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
        losses = bce_with_logits(logits, observed)
        modified = self.modified(labels, losses)
        if self.scheme == "reject":
            terms = tf.where(modified, 0.0, losses)
        else:
            terms = tf.where(modified, bce_with_logits(logits, 1.0 - observed), losses)
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


LOSSES = (LargeLossRejection, LargeLossCorrectionTemporary, LargeLossCorrectionPermanent)
