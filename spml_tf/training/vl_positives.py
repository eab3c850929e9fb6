"""CLIP's pseudo-positives of a run: the scores `spml-vl-scores` stored beside the dataset, read once before
training, turned into a [N, C] 0/1 matrix by the rule --vl_positives names (VLPL's or AEVLP's, spml_tf/methods/vl.py).

Neither rule depends on the network being trained, so computing them once is exact (up to the random flips the
authors' code gives CLIP's views; the scores are of the unflipped images). The loss reads the matrix at step time
by example index, as it reads the label bank (methods.base.LabelBankLoss): --loss=vlpl and --loss=aevlp weigh the
pseudo-positives with their own terms, every other loss takes them as positives. CLIP is used in training only:
the exported model is the classifier alone.
"""

import os

import numpy as np
import tensorflow as tf

from spml_tf.core.errors import UsageError
from spml_tf.data import datasets
from spml_tf.methods import vl

RULES = vl.RULES


def rule_of(config, loss_class):
    """The rule a run uses: --vl_positives, or for `auto` the loss's own (vlpl, aevlp) and none for the others."""
    own = getattr(loss_class, "positives_rule", None)
    rule = (own or "none") if config.vl_positives == "auto" else config.vl_positives
    if own and rule == "none":
        raise UsageError(f"--loss={config.loss} trains on CLIP's pseudo-positives: leave --vl_positives unset or give "
                         f"one of {', '.join(RULES)}")
    return rule


def scores_dir(config):
    """--vl_scores, or the one directory under <data_dir>/vl_scores (UsageError when there are none or several)."""
    if config.vl_scores:
        return config.vl_scores
    data_dir = config.data_dir or datasets.default_data_dir(config.dataset, config.observed_negatives)
    base = os.path.join(data_dir, "vl_scores")
    found = sorted(name for name in (tf.io.gfile.listdir(base) if tf.io.gfile.isdir(base) else [])
                   if tf.io.gfile.exists(os.path.join(base, name.rstrip("/"), "scores.json")))
    if len(found) != 1:
        what = "no CLIP scores" if not found else f"scores of several presets ({', '.join(found)})"
        raise UsageError(f"--vl_positives needs CLIP's scores of the training images and {base} has {what}: "
                         f"run spml-vl-scores --dataset={config.dataset} --preset=<a CLIP preset> first"
                         + (", or pass --vl_scores=<one of them>" if found else ""))
    return os.path.join(base, found[0].rstrip("/"))


def load(config, loss_class, splits, train_labels, given=None, log=print):
    """The pseudo-positive matrix of the run (float32 [N, C] of 0/1; None without --vl_positives) and the summary
    results.json keeps. `given` (a [N, C] matrix) stands in for the scores: bench/quality.py's simulated scorer."""
    full = train_labels.full if splits.train.full_labels_known else None
    if given is not None:
        positives = np.asarray(given, dtype=np.float32) * (train_labels.observed != 1)
        summary = {"rule": "given", "preset": "none (given to train_and_evaluate)"}
    else:
        rule = rule_of(config, loss_class)
        if rule == "none":
            return None, None
        from spml_tf.training import vl_scores  # its CLIP half needs KerasHub; reading the scores does not

        directory = scores_dir(config)
        arrays, meta = vl_scores.read(directory)
        vl_scores.check_matches(meta, config.dataset, splits.class_names, splits.train.num_examples,
                                splits.train.fingerprint)
        positives = positives_from_scores(config, rule, arrays, meta, train_labels.observed)
        summary = {"rule": rule, "preset": meta["preset"], "scores": directory}
    if positives.shape != train_labels.observed.shape:
        raise UsageError(f"the pseudo-positives are {positives.shape[0]} x {positives.shape[1]}, the training labels "
                         f"{train_labels.observed.shape[0]} x {train_labels.observed.shape[1]}")
    summary["pseudo_positives"] = int(positives.sum())
    if full is not None and positives.any():
        summary["precision"] = float(100.0 * (full[positives > 0] == 1).mean())
    log(describe(summary, splits.train.num_examples))
    return positives, summary


def positives_from_scores(config, rule, arrays, meta, observed):
    """The rule applied to the stored scores with the run's hyper-parameters (methods.vl.positives_for), once the
    scores are known to hold what the rule reads."""
    if rule == "aevlp":
        if not meta["grid"]:
            raise UsageError(f"AEVLP's rule reads the tiles and the scores of {meta['preset']} have none (--grid=0): "
                             "score again with --grid=4 (5 on cub)")
        if not np.isclose(meta["tile_temperature"], config.aevlp_temperature):
            raise UsageError(f"the tiles of {meta['preset']} were scored at temperature {meta['tile_temperature']:g} "
                             f"and --aevlp_temperature={config.aevlp_temperature:g}: give --aevlp_temperature="
                             f"{meta['tile_temperature']:g}, or score again with --tile_temperature="
                             f"{config.aevlp_temperature:g}")
    return vl.positives_for(rule, config, observed, arrays["global_cosine"], arrays["tile_max"], arrays["tile_min"])


def describe(summary, num_examples):
    """`CLIP pseudo-positives (aevlp rule, scores of clip_vit_base_patch16): 1,234 on 5,717 images (0.22 each),
    87.1% of them true`."""
    count = summary["pseudo_positives"]
    line = (f"CLIP pseudo-positives ({summary['rule']} rule, scores of {summary['preset']}): {count:,} on "
            f"{num_examples:,} images ({count / max(num_examples, 1):.2f} each)")
    if "precision" in summary:
        line += f", {summary['precision']:.1f}% of them true"
    return line
