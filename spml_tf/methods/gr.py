"""GR loss, "Generalized Robust Loss for Single-Positive Multi-Label Learning" (IJCAI 2024; docs/method.md
section 7.3), its epoch schedules, GR + APL (a combination no paper reports), and its authors' protocol.

Code read: yan4xi1/GRLoss. Imports spml_tf.methods.base, spml_tf.methods.em (APL) and spml_tf.core only.
"""

import tensorflow as tf

from spml_tf.methods.base import EpochSchedule, Hyperparameter, SPMLLoss, bce_with_logits, log_p
from spml_tf.methods.em import apl_callback, check_apl_warmup


def _pair(valid):
    return lambda value: len(value) == 2 and valid(value)


# yan4xi1/GRLoss, config.py: the schedules' first and last values and q = (0.01, 1).
HYPERPARAMETERS = tuple(
    Hyperparameter(name, default, f"gr, gr_apl: {what}.", _pair(valid), requirement)
    for name, default, what, valid, requirement in (
        ("gr_w", (0.0, 2.0), "first,last value of w over the epochs", lambda v: True, "takes two numbers: first,last"),
        ("gr_b", (-2.0, -2.0), "first,last value of b over the epochs", lambda v: True,
         "takes two numbers: first,last"),
        ("gr_mu", (0.5, 0.8), "first,last value of mu over the epochs", lambda v: True,
         "takes two numbers: first,last"),
        ("gr_sigma", (2.0, 0.5), "first,last value of sigma over the epochs", lambda v: min(v) > 0,
         "takes two positive numbers: first,last"),
        ("gr_q", (0.01, 1.0), "q2,q3 of the two robust terms", lambda v: min(v) > 0,
         "takes two positive numbers: q2,q3"),
    ))

# GR (yan4xi1/GRLoss, config.py and train.py): batch 8, Adam 1e-5, lr_mult 10, 8 epochs, the schedules above,
# q = (0.01, 1); stop when val mAP falls more than 2 below its best. No per-dataset values in that code.
_GR = dict(batch_size=8, learning_rate=1e-5, head_lr_mult=10.0, epochs=8, max_map_drop=2.0, patience=8)  # no patience rule


def protocol(loss, head, dataset):
    """The Config fields the authors' protocol of `loss` sets on one of the paper's datasets."""
    del head, dataset
    return dict(_GR) if loss in ("gr", "gr_apl") else {}


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
        return tf.where(labels == 1.0, -log_p(logits),
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
        check_apl_warmup(config)

    def callbacks(self, context):
        return super().callbacks(context) + [apl_callback(context)]

    def entry_terms(self, labels, logits):
        soft_target = tf.maximum(-labels, 0.0)
        pseudo_negative = self.beta * bce_with_logits(logits, soft_target)
        return tf.where(labels < 0.0, pseudo_negative, super().entry_terms(labels, logits))

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


# Every loss, by its --loss name: the one list to extend.

LOSSES = (GeneralizedRobust, GeneralizedRobustAPL)
