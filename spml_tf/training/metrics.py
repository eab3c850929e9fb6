"""Vectorised multi-label metrics: mAP (docs/method.md section 4), F1, precision@k and recall@k."""

import numpy as np

# Probability from which a class counts as predicted (F1 in results, `labels` of the exported model): the
# authors' recommendation for EM-trained models, whose probabilities on unannotated labels sit near 0.5.
THRESHOLD = 0.75


def average_precision_per_class(y_true, scores):
    """sklearn's average precision of every class at once; 0 for a class without positives.

    AP = sum over distinct thresholds of (R_n - R_{n-1}) * P_n. With each
    class's scores sorted in descending order, a threshold is the last entry
    of a run of tied scores, so every positive contributes the precision read
    at the end of its run, divided by the number of positives. The order
    within a run of ties changes nothing, so a plain (unstable) sort will do.
    Classes are rows here (classes x examples): every step then runs along
    contiguous memory (measured 0.86 -> 0.18 s on COCO's 65,665 x 80).
    """
    y_true = np.ascontiguousarray((np.asarray(y_true) > 0).T)
    scores = np.ascontiguousarray(np.asarray(scores).T)
    num_examples = scores.shape[1]
    order = np.argsort(-scores, axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_true = np.take_along_axis(y_true, order, axis=1)
    hits = np.cumsum(sorted_true, axis=1, dtype=np.int64)
    is_run_end = np.ones(scores.shape, dtype=bool)
    is_run_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    # Position of the end of each entry's run: a reverse running minimum of the run ends.
    run_end = np.minimum.accumulate(np.where(is_run_end, np.arange(num_examples), num_examples)[:, ::-1], axis=1)
    run_end = run_end[:, ::-1]
    precision_at_run_end = np.take_along_axis(hits, run_end, axis=1) / (run_end + 1.0)
    num_pos = y_true.sum(axis=1)
    ap = np.where(sorted_true, precision_at_run_end, 0.0).sum(axis=1) / np.maximum(num_pos, 1)
    return np.where(num_pos > 0, ap, 0.0)


def mean_average_precision(y_true, scores):
    """Mean over classes of average precision, in percent (a class without positives counts 0)."""
    return 100.0 * float(np.mean(average_precision_per_class(y_true, scores)))


def worst_classes(per_class, count=None):
    """[(class, AP)] sorted by AP, worst first (ties by name); the first `count`, or all."""
    ranked = sorted(per_class.items(), key=lambda item: (item[1], item[0]))
    return ranked if count is None else ranked[:count]


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
    without positives are left out of recall). Ties at the k-th score go to
    the lower class index.
    """
    y_true = np.asarray(y_true) > 0
    k = min(k, y_true.shape[1])
    hits = (top_k_mask(np.asarray(scores), k) & y_true).sum(axis=1)
    num_pos = y_true.sum(axis=1)
    precision = hits / k
    has_pos = num_pos > 0
    recall = hits[has_pos] / num_pos[has_pos] if has_pos.any() else np.zeros(1)
    return 100.0 * float(precision.mean()), 100.0 * float(recall.mean())


def top_k_mask(scores, k):
    """Each row's k highest scores (ties to the lower class index), found without sorting whole rows.

    The k-th highest value comes from a partition; everything above it is in,
    and of the entries equal to it, the first ones (by class index) fill the
    remaining places: what a stable descending sort would pick.
    """
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth
    tied = scores == kth
    places_left = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= places_left))


def evaluate(y_true, scores, threshold=0.75, ks=(1, 3, 5)):
    """Every metric of a split as a flat dict of percentages."""
    return _evaluate(y_true, scores, average_precision_per_class(y_true, scores), threshold, ks)


def evaluate_with_classes(y_true, scores, class_names, threshold=0.75, ks=(1, 3, 5)):
    """(evaluate's dict, {class name: AP in percent}): the per-class AP is computed once for both."""
    ap = average_precision_per_class(y_true, scores)
    return _evaluate(y_true, scores, ap, threshold, ks), dict(zip(class_names, (100.0 * ap).tolist()))


def _evaluate(y_true, scores, ap, threshold, ks):
    micro, macro = f1_scores(y_true, scores, threshold)
    result = {"map": 100.0 * float(np.mean(ap)), "f1_micro": micro, "f1_macro": macro}  # mean_average_precision
    for k in ks:
        result[f"precision_at_{k}"], result[f"recall_at_{k}"] = precision_recall_at_k(y_true, scores, k)
    return result
