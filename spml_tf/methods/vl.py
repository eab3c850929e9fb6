"""SPML with pseudo-positives from a frozen CLIP (docs/method.md section 7.5): VLPL (Xing et al., CVPR-W 2024)
and AEVLP (Tran et al., ICCV 2025, arXiv 2508.20381): their pseudo-labelling rules, their losses and their
authors' protocols. The rules also give any other loss its CLIP positives (base.LabelBankLoss).

The rules run once, before training, on stored CLIP scores of the whole training set (the scoring command
writes them). The authors recompute them every batch on freshly flipped views: a documented deviation.

Code read: mvrl/VLPL (MIT), Fsoft-AIC/AEVLP (CC BY-NC-SA; its formulas are restated here, none of its code
is). Imports spml_tf.methods.base, spml_tf.methods.cole, spml_tf.methods.em, spml_tf.methods.gr and
spml_tf.core only.
"""

import numpy as np
import tensorflow as tf

from spml_tf.methods.base import Hyperparameter, bce_with_logits
from spml_tf.methods.cole import expected_positive_penalty
from spml_tf.methods.em import EntropyMaximization
from spml_tf.methods.gr import GeneralizedRobust


def _between(low, high):
    return lambda value: low <= value <= high


# Per dataset (voc, coco, nuswide, cub) from Fsoft-AIC/AEVLP configs/{pascal,coco,nuswide,cub}.json (`lam`,
# `reg`, `temp`, `eta`, `threshold`) and config.py `_LOOKUP['top_k']`; VLPL's from mvrl/VLPL main_clip.py
# (`beta_pos` L305/L324/L340/L356, the 0.9 of losses.py L227, `-t` L278, `-th` L279). A user's data starts
# from VOC's values (the defaults).
HYPERPARAMETERS = (
    Hyperparameter("vl_positive_weight", 0.7, "vlpl: weight (beta+) of the loss on CLIP pseudo-positives.",
                   lambda v: v >= 0, "must be >= 0"),
    Hyperparameter("vl_soft_target", 0.9, "vlpl, aevlp: soft target (rho) of the BCE on CLIP pseudo-positives.",
                   _between(0, 1), "must be in [0, 1]"),
    Hyperparameter("vlpl_temperature", 0.01, "VLPL rule: temperature of the softmax over classes of the CLIP "
                   "cosines.", lambda v: v > 0, "must be positive"),
    Hyperparameter("vlpl_threshold", 0.3, "VLPL rule: a class whose softmax score is above this is a "
                   "pseudo-positive.", _between(0, 1), "must be in [0, 1]"),
    Hyperparameter("aevlp_lambda", (0.7, 0.4), "aevlp: lambda1,lambda2: the weight of a pseudo-positive stays "
                   "in [lambda2, lambda1].", lambda v: len(v) == 2 and 0 <= v[1] <= v[0] <= 1,
                   "takes two numbers lambda1,lambda2 with 0 <= lambda2 <= lambda1 <= 1",
                   per_dataset=dict(voc=(0.7, 0.4), coco=(0.7, 0.5), nuswide=(0.7, 0.5), cub=(0.8, 0.2))),
    Hyperparameter("aevlp_reg", 0.05, "aevlp: weight of the expected-positive regulariser (EPR, k = "
                   "--expected_num_pos).", lambda v: v >= 0, "must be >= 0",
                   per_dataset=dict(voc=0.05, coco=0.001, nuswide=0.001, cub=0.01)),
    Hyperparameter("aevlp_temperature", 0.01, "AEVLP rule: temperature of the softmax over classes of the CLIP "
                   "cosines (global view; the tiles' is the scoring command's).", lambda v: v > 0,
                   "must be positive", per_dataset=dict(voc=0.01, coco=0.01, nuswide=0.01, cub=0.1)),
    Hyperparameter("aevlp_eta", 0.0, "AEVLP rule: cap of the per-image threshold a tile's score must pass.",
                   _between(0, 1), "must be in [0, 1]",
                   per_dataset=dict(voc=0.0, coco=0.3, nuswide=0.3, cub=0.005)),
    Hyperparameter("aevlp_theta", 0.5, "AEVLP rule: least combined score of a pseudo-positive.", _between(0, 1),
                   "must be in [0, 1]", per_dataset=dict(voc=0.5, coco=0.5, nuswide=0.6, cub=0.005)),
    Hyperparameter("aevlp_top_k", 3, "AEVLP rule: at most this many pseudo-positives per image (its top "
                   "combined scores).", lambda v: v >= 1, "must be at least 1",
                   per_dataset=dict(voc=3, coco=3, nuswide=3, cub=32)),
)


# --- The pseudo-labelling rules ------------------------------------------------------------------------------------


def class_softmax(cosine, temperature):
    """softmax over classes (the last axis) of cosine / temperature, in float64."""
    z = np.asarray(cosine, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _check_shapes(observed, *scores):
    observed = np.asarray(observed)
    for score in scores:
        if np.shape(score) != observed.shape or observed.ndim != 2:
            raise ValueError(f"CLIP scores of shape {np.shape(score)} for labels of shape {observed.shape}")
    return observed


def vlpl_positives(global_cosine, observed, temperature=0.01, threshold=0.3):
    """VLPL's pseudo-positives (bool N x C): s = softmax_c(global_cosine / temperature), positive where
    s > threshold (strictly; at most 1 / threshold classes per image).

    `global_cosine` is the cosine of each image's CLIP embedding with each class's text embedding. The observed
    positive always stays a positive label, so it is never returned (False wherever `observed` == 1); nor are
    annotated negatives (-1) made positive. VLPL makes no pseudo-negatives (its code's are disabled).
    """
    observed = _check_shapes(observed, global_cosine)
    return (class_softmax(global_cosine, temperature) > threshold) & (observed == 0)


def aevlp_positives(global_cosine, tile_max, tile_min, observed, temperature, eta, theta, top_k):
    """AEVLP's local-global pseudo-positives (bool N x C), restated from its released code.

    s_g = softmax_c(global_cosine / temperature); per image the threshold eta_i = min(eta, s_g at its observed
    positive) (several observed positives: the least of them; none: eta; the released code reads the
    largest, the same with one positive, and 0 for none); local = tile_max where tile_max > eta_i (strictly),
    else tile_min; s_hat = (s_g + local) / 2. Class c is a pseudo-positive iff it is among the top_k of s_hat[i]
    (equal scores rank by class index, the lower first: a stable sort; torch.topk leaves ties unordered) and
    s_hat >= theta. The observed positive takes a place in the top_k but is never returned (False where
    observed == 1; it stays a positive anyway); annotated negatives (-1) are never returned either.

    `tile_max`, `tile_min` are the max and min over the image's tiles of the tiles' softmax scores (at the
    tile temperature), as the scoring command stores them. The released code's "negatives" write 0, not -1:
    it makes no pseudo-negatives, and neither does this.
    """
    observed = _check_shapes(observed, global_cosine, tile_max, tile_min)
    global_score = class_softmax(global_cosine, temperature)
    tile_max, tile_min = np.asarray(tile_max, np.float64), np.asarray(tile_min, np.float64)
    at_positives = np.where(observed == 1, global_score, np.inf).min(axis=1)
    image_eta = np.minimum(at_positives, eta)[:, None]
    combined = (global_score + np.where(tile_max > image_eta, tile_max, tile_min)) / 2.0
    top = np.argsort(-combined, axis=1, kind="stable")[:, :min(top_k, observed.shape[1])]
    in_top = np.zeros(observed.shape, bool)
    np.put_along_axis(in_top, top, True, axis=1)
    return in_top & (combined >= theta) & (observed == 0)


def positives_for(rule, config, observed, global_cosine, tile_max=None, tile_min=None):
    """The pseudo-positives of `rule` ("vlpl" or "aevlp") with a Config's settings, as float32 N x C (1 = a
    pseudo-positive), ready for base.LabelBankLoss."""
    if rule == "vlpl":
        positives = vlpl_positives(global_cosine, observed, config.vlpl_temperature, config.vlpl_threshold)
    elif rule == "aevlp":
        if tile_max is None or tile_min is None:
            raise ValueError("the aevlp rule needs the tiles' scores (tile_max, tile_min)")
        positives = aevlp_positives(global_cosine, tile_max, tile_min, observed, config.aevlp_temperature,
                                    config.aevlp_eta, config.aevlp_theta, config.aevlp_top_k)
    else:
        raise ValueError(f"unknown pseudo-positive rule {rule!r}: vlpl or aevlp")
    return positives.astype(np.float32)


RULES = ("vlpl", "aevlp")


# --- The losses ----------------------------------------------------------------------------------------------------


class PseudoPositiveLoss:
    """A loss with its own term on CLIP pseudo-positives: `call_with_positives(labels, logits, positives)`, the
    per-example values (mean over classes, plus the regulariser); `call` is it without pseudo-positives."""

    takes_positives = True

    def call(self, y_true, y_pred):
        return self.call_with_positives(y_true, y_pred, tf.zeros_like(tf.cast(y_pred, tf.float32)))

    def call_with_positives(self, labels, logits, positives):
        labels, logits = tf.cast(labels, tf.float32), tf.cast(logits, tf.float32)
        pseudo = (labels == 0.0) & (tf.cast(positives, tf.float32) > 0.0)
        terms = tf.where(pseudo, self.pseudo_positive_term(logits), self.entry_terms(labels, logits))
        terms = tf.where(labels == -1.0, self.negative_term(logits), terms)
        return tf.reduce_mean(terms, axis=-1) + self.regularizer(labels, logits)

    def pseudo_positive_term(self, logits):
        raise NotImplementedError


class VisionLanguagePseudoLabels(PseudoPositiveLoss, EntropyMaximization):
    """VLPL (Xing et al., CVPR-W 2024): EM with CLIP pseudo-positives. Per entry: -log p on positives,
    -log(1 - p) on annotated negatives, beta+ [rho (-log p) + (1 - rho) (-log(1 - p))] on pseudo-positives,
    -alpha H(p) on the other unannotated entries, 0 on APL's -s; mean over classes (the authors' sum / (B C))."""

    key = "vlpl"
    positives_rule = "vlpl"
    hyperparameters = ("alpha", "vl_positive_weight", "vl_soft_target", "vlpl_temperature", "vlpl_threshold")

    def __init__(self, alpha=0.2, vl_positive_weight=0.7, vl_soft_target=0.9, vlpl_temperature=0.01,
                 vlpl_threshold=0.3, name="vlpl", **kwargs):
        super().__init__(alpha=alpha, name=name, **kwargs)
        self.vl_positive_weight, self.vl_soft_target = float(vl_positive_weight), float(vl_soft_target)
        self.vlpl_temperature, self.vlpl_threshold = float(vlpl_temperature), float(vlpl_threshold)

    def pseudo_positives(self, observed, global_cosine):
        """Its rule with its settings (vlpl_positives)."""
        return vlpl_positives(global_cosine, observed, self.vlpl_temperature, self.vlpl_threshold)

    def pseudo_positive_term(self, logits):
        return self.vl_positive_weight * bce_with_logits(logits, self.vl_soft_target)

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in self.hyperparameters}}


class GeneralizedPseudoLabelRobust(PseudoPositiveLoss, GeneralizedRobust):
    """AEVLP's loss, GPR ("Generalized Pseudo-Label Robust"; Tran et al., ICCV 2025), restated from its released
    code: GR (gr.py: its terms, its schedules of w, b, mu, sigma, and q2, q3) on the unannotated entries that
    are no pseudo-positive; -log p on positives; -log(1 - p) on annotated negatives; on pseudo-positives
    (1 - clip(v(p), 1 - lambda1, 1 - lambda2)) [rho (-log p) + (1 - rho) (-log(1 - p))], v GR's weight at this
    epoch on p without gradient; 0 on APL's -s. Mean over classes, plus reg * EPR over the global batch."""

    key = "aevlp"
    positives_rule = "aevlp"
    hyperparameters = GeneralizedRobust.hyperparameters + (
        "aevlp_lambda", "aevlp_reg", "expected_num_pos", "vl_soft_target", "aevlp_temperature", "aevlp_eta",
        "aevlp_theta", "aevlp_top_k")

    def __init__(self, aevlp_lambda=(0.7, 0.4), aevlp_reg=0.05, expected_num_pos=1.5, vl_soft_target=0.9,
                 aevlp_temperature=0.01, aevlp_eta=0.0, aevlp_theta=0.5, aevlp_top_k=3, **kwargs):
        super().__init__(**kwargs)
        self.aevlp_lambda = tuple(float(v) for v in aevlp_lambda)
        self.aevlp_reg, self.expected_num_pos = float(aevlp_reg), float(expected_num_pos)
        self.vl_soft_target = float(vl_soft_target)
        self.aevlp_temperature, self.aevlp_eta = float(aevlp_temperature), float(aevlp_eta)
        self.aevlp_theta, self.aevlp_top_k = float(aevlp_theta), int(aevlp_top_k)

    def pseudo_positives(self, observed, global_cosine, tile_max, tile_min):
        """Its rule with its settings (aevlp_positives)."""
        return aevlp_positives(global_cosine, tile_max, tile_min, observed, self.aevlp_temperature,
                               self.aevlp_eta, self.aevlp_theta, self.aevlp_top_k)

    def pseudo_positive_term(self, logits):
        _, _, mu, sigma = tf.unstack(self.schedule)
        fixed = tf.stop_gradient(tf.sigmoid(logits))
        v = tf.exp(-0.5 * tf.square((fixed - mu) / sigma))  # GR's v (gr.py, unannotated_term)
        first, second = self.aevlp_lambda
        weight = 1.0 - tf.clip_by_value(v, 1.0 - first, 1.0 - second)
        return weight * bce_with_logits(logits, self.vl_soft_target)

    def regularizer(self, labels, logits):
        return self.aevlp_reg * expected_positive_penalty(logits, self.expected_num_pos)

    def get_config(self):
        values = {name: getattr(self, name) for name in self.hyperparameters}
        return {**super(GeneralizedRobust, self).get_config(),
                **{name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}}


# --- The authors' protocols ----------------------------------------------------------------------------------------

# VLPL (mvrl/VLPL main_clip.py): batch 8 on every dataset (`bsize`, L301/L317/L333/L349), Adam (L242-245) at
# lr 1e-5, CUB 1e-4 (L302/L318/L334/L350) for every parameter: no head multiplier, no weight decay; alpha
# (L304/L323/L339/L355); 10 epochs (L386); no early stopping (the block is commented out, L153-158), the
# best epoch by val mAP (L370): patience = epochs never stops.
_VLPL = dict(batch_size=8, epochs=10, head_lr_mult=1.0, max_map_drop=0.0, patience=10)
_VLPL_DATA = {"voc": dict(learning_rate=1e-5, alpha=0.2), "coco": dict(learning_rate=1e-5, alpha=0.1),
              "nuswide": dict(learning_rate=1e-5, alpha=0.1), "cub": dict(learning_rate=1e-4, alpha=0.01)}
# AEVLP (Fsoft-AIC/AEVLP configs/{pascal,coco,nuswide,cub}.json: `bsize`, `num_epochs`, `lr`, `lr_mult`,
# `beta` = [w0, wT, b0, bT], `alpha` = [mu0, sigma0, muT, sigmaT], `q2q3`; train.py: Adam, two groups, the head
# at lr_mult x lr): GR's schedules with other values on COCO, NUS-WIDE and CUB, q3 1.5 on CUB. Stop (train.py
# L228) when val mAP is more than 2 below its best or has not improved for 2 epochs (whichever comes first).
_AEVLP = dict(learning_rate=1e-5, head_lr_mult=10.0, max_map_drop=2.0, patience=2, gr_mu=(0.5, 0.8),
              gr_sigma=(2.0, 0.5))
_AEVLP_DATA = {
    "voc": dict(batch_size=8, epochs=8, gr_w=(0.0, 2.0), gr_b=(-2.0, -2.0), gr_q=(0.01, 1.0)),
    "coco": dict(batch_size=16, epochs=8, gr_w=(0.0, 10.0), gr_b=(-2.0, -8.0), gr_q=(0.01, 1.0)),
    "nuswide": dict(batch_size=16, epochs=10, gr_w=(0.0, 10.0), gr_b=(-2.0, -8.0), gr_q=(0.01, 1.0)),
    "cub": dict(batch_size=8, epochs=10, gr_w=(0.0, 10.0), gr_b=(-2.0, -8.0), gr_q=(0.01, 1.5)),
}


def protocol(loss, head, dataset):
    """The Config fields the authors' protocol of `loss` sets on one of the paper's datasets."""
    del head
    if loss == "vlpl":
        return {**_VLPL, **_VLPL_DATA[dataset]}
    if loss == "aevlp":
        return {**_AEVLP, **_AEVLP_DATA[dataset]}
    return {}


LOSSES = (VisionLanguagePseudoLabels, GeneralizedPseudoLabelRobust)
