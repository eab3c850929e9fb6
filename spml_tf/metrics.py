"""Vectorised multi-label metrics: mAP (SPEC definition), F1, precision@k and recall@k."""

import numpy as np


def average_precision_per_class(y_true, scores):
    """sklearn's average precision of every column at once; 0 for a column without positives.

    AP = sum over distinct thresholds of (R_n - R_{n-1}) * P_n. With each
    column sorted by descending score, a threshold is the last entry of a run
    of tied scores, so every positive contributes the precision read at the
    end of its run, divided by the number of positives.
    """
    y_true = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    num_examples = y_true.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_true = np.take_along_axis(y_true, order, axis=0)
    precision = np.cumsum(sorted_true, axis=0) / np.arange(1, num_examples + 1)[:, None]
    positions = np.broadcast_to(np.arange(num_examples)[:, None], scores.shape)
    is_run_end = np.ones(scores.shape, dtype=bool)
    is_run_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    # Index of the end of each entry's run: a reverse running minimum.
    run_end = np.minimum.accumulate(np.where(is_run_end, positions, num_examples)[::-1], axis=0)[::-1]
    precision_at_run_end = np.take_along_axis(precision, run_end, axis=0)
    num_pos = y_true.sum(axis=0)
    ap = (sorted_true * precision_at_run_end).sum(axis=0) / np.maximum(num_pos, 1)
    return np.where(num_pos > 0, ap, 0.0)


def mean_average_precision(y_true, scores):
    """Mean over classes of average precision, in percent (a class without positives counts 0)."""
    return 100.0 * float(np.mean(average_precision_per_class(y_true, scores)))


def f1_scores(y_true, scores, threshold):
    """(micro F1, macro F1) in percent of `scores >= threshold` against y_true."""
    y_true = np.asarray(y_true) > 0
    y_pred = np.asarray(scores) >= threshold
    tp = (y_true & y_pred).sum(axis=0).astype(np.float64)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    per_class = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return 100.0 * float(micro), 100.0 * float(per_class.mean())


def precision_recall_at_k(y_true, scores, k):
    """(precision@k, recall@k) in percent, averaged over examples.

    precision@k: share of the k top-scored classes that are positive; recall@k:
    share of an example's positives among its k top-scored classes (examples
    without positives are left out of recall).
    """
    y_true = np.asarray(y_true) > 0
    k = min(k, y_true.shape[1])
    top_k = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(y_true, top_k, axis=1).sum(axis=1)
    num_pos = y_true.sum(axis=1)
    precision = hits / k
    has_pos = num_pos > 0
    recall = hits[has_pos] / num_pos[has_pos] if has_pos.any() else np.zeros(1)
    return 100.0 * float(precision.mean()), 100.0 * float(recall.mean())


def evaluate(y_true, scores, threshold=0.75, ks=(1, 3, 5)):
    """Every metric of a split as a flat dict of percentages."""
    micro, macro = f1_scores(y_true, scores, threshold)
    result = {"map": mean_average_precision(y_true, scores), "f1_micro": micro, "f1_macro": macro}
    for k in ks:
        result[f"precision_at_{k}"], result[f"recall_at_{k}"] = precision_recall_at_k(y_true, scores, k)
    return result
