"""Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels" (ECCV 2022):
the entropy-maximisation loss EM and asymmetric pseudo-labelling APL (docs/method.md sections 2 and 3): the
losses, the NumPy APL round, and the callback that runs it after each epoch.

Code read: Correr-Zhou/SPML-AckTheUnknown. Imports spml_tf.methods.base and spml_tf.core only.
"""

import keras
import numpy as np
import tensorflow as tf

from spml_tf.core import schema
from spml_tf.core.errors import UsageError
from spml_tf.methods.base import Hyperparameter, SPMLLoss, log_not_p, log_p

# The paper's table of (alpha, beta, T_w) per dataset (its section 4.1, docs/method.md section 4), theta = 0.9;
# a user's own data starts from VOC's. On the embedded digits theta is 0.5, not 0.9: APL turns theta of the
# unannotated labels negative, so theta must stay below the share of true negatives among them. That is 97% on
# VOC (1.5 positives of 20) but 67% on digits (4 of 10): theta 0.9 made a quarter of the pseudo-negatives false
# there (74% precision, measured).
HYPERPARAMETERS = (
    Hyperparameter("alpha", 0.2, "EM: weight of the entropy term on unannotated labels.", lambda v: v >= 0,
                   "must be >= 0", per_dataset=dict(voc=0.2, coco=0.1, nuswide=0.1, cub=0.01, custom=0.2, digits=0.2)),
    Hyperparameter("beta", 0.02, "APL: weight of the loss on negative pseudo-labels.", lambda v: v >= 0,
                   "must be >= 0",
                   per_dataset=dict(voc=0.02, coco=0.9, nuswide=0.2, cub=0.4, custom=0.02, digits=0.02)),
    Hyperparameter("warmup_epochs", 5, "APL runs after every epoch >= this one (epochs count from 1).",
                   lambda v: v >= 1, "must be at least 1",
                   per_dataset=dict(voc=5, coco=5, nuswide=4, cub=3, custom=5, digits=5)),
    Hyperparameter("neg_proportion", 0.9, "APL: share of the unannotated labels made negative in all (theta).",
                   lambda v: 0 < v <= 1, "must be in (0, 1]", per_dataset=dict(digits=0.5)),
)

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
        return -tf.sigmoid(logits) * log_p(logits) - tf.sigmoid(-logits) * log_not_p(logits)

    def entry_terms(self, labels, logits):
        positive = -log_p(logits)
        unannotated = -self.alpha * self.entropy(logits)
        return tf.where(labels == 1.0, positive, tf.where(labels == 0.0, unannotated, 0.0))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


def check_apl_warmup(config):
    if config.warmup_epochs >= config.epochs:
        fix = (f"add --warmup_epochs={config.epochs - 1}" if config.epochs >= 2
               else f"use --loss={config.loss.removesuffix('_apl')} (no APL) or --epochs=2 --warmup_epochs=1")
        raise UsageError(f"--warmup_epochs={config.warmup_epochs} must be smaller than --epochs={config.epochs} "
                         f"with --loss={config.loss}, or APL never runs: {fix}")


def apl_callback(context):
    """The APL callback of a run: em_apl's, and any other loss's that adds APL's pseudo-negatives (gr_apl)."""
    config = context.config
    return APLCallback(context.predictor, context.bank, context.train_eval_dataset, context.full_train_labels,
                       config.warmup_epochs, config.epochs, config.neg_proportion)


class EntropyMaximizationAPL(EntropyMaximization):
    """EM + APL: EM, plus beta * BCE(p; target s) on each pseudo-negative -s; APL makes the -s after each epoch."""

    key = "em_apl"
    hyperparameters = ("alpha", "beta")

    def __init__(self, alpha, beta, name="em_apl", **kwargs):
        super().__init__(alpha=alpha, name=name, **kwargs)
        self.beta = float(beta)

    @classmethod
    def check_config(cls, config):
        check_apl_warmup(config)

    def callbacks(self, context):
        return [apl_callback(context)]

    def entry_terms(self, labels, logits):
        soft_target = tf.maximum(-labels, 0.0)  # labels -1 are replaced in call()
        pseudo_negative = -self.beta * (soft_target * log_p(logits) + (1.0 - soft_target) * log_not_p(logits))
        em = super().entry_terms(labels, logits)
        return tf.where(labels < 0.0, pseudo_negative, em)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}




# A pseudo-negative stores -p. If p underflowed to exactly 0, -0.0 == 0 would
# read as "unannotated" again; storing at least this keeps it marked, and
# changes the loss by less than 1e-37. If p rounded up to exactly 1, -1 would
# read as an annotated negative; storing at most the float32 just below 1 keeps
# it a pseudo-negative.
_SMALLEST_TARGET = np.finfo(np.float32).tiny
_LARGEST_TARGET = np.nextafter(np.float32(1), np.float32(0))


def is_pseudo_negative(labels):
    """The entries that are APL pseudo-negatives -s (0 <= s < 1), not annotated negatives (-1)."""
    labels = np.asarray(labels)
    return (labels < 0) & (labels > -1)


def negatives_per_round(initial_unannotated, neg_proportion, num_rounds):
    """floor(theta * U_c / (T_t - T_w)) for every class c."""
    return np.floor(neg_proportion * np.asarray(initial_unannotated) / num_rounds).astype(np.int64)


def apl_round(labels, probs, initial_unannotated, neg_proportion, num_epochs, warmup_epoch):
    """One self-paced round: per class, the lowest-probability unannotated entries become -p.

    Among the entries of class c still equal to 0, the
    floor(neg_proportion * initial_unannotated[c] / (num_epochs - warmup_epoch))
    with the lowest probability (ties broken by example index) are set to -p.
    No positive pseudo-labels are made. Returns a new matrix.
    """
    labels = np.asarray(labels, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    per_round = negatives_per_round(initial_unannotated, neg_proportion, num_epochs - warmup_epoch)
    unannotated = labels == 0.0
    # Per class, the per_round-th lowest probability among unannotated entries
    # (annotated ones sort last), read from a plain sort of each column; every
    # entry below it is chosen, and of those equal to it, the first by example
    # index fill the remaining places: exactly a stable ranking's choice, at a
    # fifth of the time (measured on COCO's 65,665 x 80).
    keys = np.where(unannotated, probs, np.inf)
    kth_row = np.clip(per_round - 1, 0, labels.shape[0] - 1)
    kth = np.take_along_axis(np.sort(keys, axis=0), kth_row[None, :], axis=0)
    below = keys < kth
    tied = keys == kth
    places_left = per_round[None, :] - below.sum(axis=0, keepdims=True)
    chosen = unannotated & (below | (tied & (np.cumsum(tied, axis=0) <= places_left))) & (per_round[None, :] > 0)
    return np.where(chosen, -np.clip(probs, _SMALLEST_TARGET, _LARGEST_TARGET), labels)


class APLCallback(keras.callbacks.Callback):
    """After each epoch >= warmup, predicts every training example and adds APL pseudo-negatives to the bank.

    Each round is recorded in `rounds` and in the epoch logs (`apl_*` keys).
    Its state (rounds, initial counts) survives a kill through the checkpoint.
    """

    state_key = "apl"

    def __init__(self, predictor, bank, predict_dataset, full_labels, warmup_epochs, num_epochs, neg_proportion):
        """`predictor` (an evaluation.Predictor of the classifier) scores `predict_dataset`, the training images.

        `full_labels` (N x C, index order) measures the pseudo-labels'
        precision; None when the true training labels are unknown.
        """
        super().__init__()
        self.predictor = predictor
        self.bank = bank
        self.predict_dataset = predict_dataset
        self.full_labels = full_labels
        self.warmup_epochs, self.num_epochs, self.neg_proportion = warmup_epochs, num_epochs, neg_proportion
        self.initial_unannotated = (bank.numpy() == 0.0).sum(axis=0)
        self.rounds = []

    def get_state(self):
        return {"rounds": self.rounds, "initial_unannotated": self.initial_unannotated.tolist()}

    def state_schema(self, epochs_done):
        """A round per epoch from the warm-up on (at most one per epoch done), and a count per class."""
        num_examples, num_classes = self.bank.shape
        entries = schema.Integer(0, num_examples * num_classes)
        percent = schema.Number(0, 100)
        record = schema.Record({"epoch": schema.Integer(self.warmup_epochs, max(epochs_done, self.warmup_epochs)),
                                "new_pseudo_negatives": entries, "total_pseudo_negatives": entries},
                               optional={"precision": percent, "total_precision": percent})
        return schema.Record({"rounds": schema.ListOf(record, max_length=epochs_done),
                              "initial_unannotated": schema.ListOf(schema.Integer(0, num_examples),
                                                                   length=num_classes)})

    def results(self):
        """What results.json reports of APL: every round (new and total pseudo-negatives, their precision)."""
        return {"apl_rounds": self.rounds}

    def set_state(self, state):
        """Continues a resumed run: its rounds so far, and the counts of unannotated labels it started with."""
        self.rounds = list(state["rounds"])
        self.initial_unannotated = np.asarray(state["initial_unannotated"], np.int64)

    def on_epoch_end(self, epoch, logs=None):
        epoch += 1  # docs/method.md section 3 counts epochs from 1
        # The round after the last epoch would change labels nothing trains on.
        if epoch < self.warmup_epochs or epoch >= self.num_epochs:
            return
        probs = self.predictor.probabilities(self.predict_dataset, self.bank.shape[0])
        before = self.bank.numpy()
        after = apl_round(before, probs, self.initial_unannotated, self.neg_proportion, self.num_epochs,
                          self.warmup_epochs)
        self.bank.assign(after)
        new = (after < 0) & (before == 0)
        pseudo = is_pseudo_negative(after)  # annotated negatives (-1) are not APL's
        record = {
            "epoch": epoch,
            "new_pseudo_negatives": int(new.sum()),
            "total_pseudo_negatives": int(pseudo.sum()),
        }
        if self.full_labels is not None:
            record["precision"] = 100.0 * float((self.full_labels[new] == 0).mean()) if new.any() else 100.0
            record["total_precision"] = (100.0 * float((self.full_labels[pseudo] == 0).mean()) if pseudo.any()
                                         else 100.0)
        self.rounds.append(record)
        if logs is not None:
            logs["apl_new_pseudo_negatives"] = record["new_pseudo_negatives"]
            logs["apl_total_pseudo_negatives"] = record["total_pseudo_negatives"]
            if "precision" in record:
                logs["apl_precision"] = record["precision"]


LOSSES = (EntropyMaximization, EntropyMaximizationAPL)
