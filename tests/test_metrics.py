"""Tests for spml_tf.training.metrics against sklearn and plain loops."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from spml_tf.training import metrics

# --- Independent statements ----------------------------------------------------------


def sklearn_average_precisions(y_true, scores):
    """sklearn's AP of each column; 0 for a column without positives (docs/method.md section 4)."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    aps = []
    for c in range(y_true.shape[1]):
        if y_true[:, c].sum() == 0:
            aps.append(0.0)
        else:
            aps.append(average_precision_score(y_true[:, c], scores[:, c]))
    return np.array(aps)


def sklearn_map(y_true, scores):
    """Mean over classes of sklearn's AP, in percent."""
    return 100.0 * sklearn_average_precisions(y_true, scores).mean()


def loop_precision_recall_at_k(y_true, scores, k):
    """precision@k and recall@k in percent, one example at a time.

    Classes are ranked by descending score, ties by lower class index first;
    k is capped at the number of classes; examples without positives are left
    out of recall (recall is 0 when no example has a positive).
    """
    num_examples, num_classes = y_true.shape
    k = min(k, num_classes)
    precisions, recalls = [], []
    for i in range(num_examples):
        ranked = sorted(range(num_classes), key=lambda c: (-scores[i, c], c))
        hits = sum(1 for c in ranked[:k] if y_true[i, c] == 1)
        precisions.append(hits / k)
        num_pos = int(y_true[i].sum())
        if num_pos > 0:
            recalls.append(hits / num_pos)
    recall = np.mean(recalls) if recalls else 0.0
    return 100.0 * np.mean(precisions), 100.0 * recall


# --- Data ------------------------------------------------------------------------------


def random_data(seed, num_examples=60, num_classes=8, ties=False):
    """(y_true in {0, 1}, scores in [0, 1]); with ties, scores take only 5 distinct values."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((num_examples, num_classes)) < 0.3).astype(np.int64)
    y_true[0] = 1  # every class has at least one positive
    if ties:
        scores = rng.integers(0, 5, size=(num_examples, num_classes)) / 4.0
    else:
        scores = rng.random((num_examples, num_classes))
    return y_true, scores


# --- mAP -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_sklearn_on_random_data(seed):
    """mAP equals the per-class sklearn loop, in percent."""
    y_true, scores = random_data(seed)
    assert abs(metrics.mean_average_precision(y_true, scores) - sklearn_map(y_true, scores)) < 1e-9


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_map_matches_sklearn_with_many_ties(seed):
    """With heavily tied scores, AP uses sklearn's threshold-per-distinct-score definition."""
    y_true, scores = random_data(seed, ties=True)
    assert abs(metrics.mean_average_precision(y_true, scores) - sklearn_map(y_true, scores)) < 1e-9


def test_average_precision_per_class_matches_sklearn():
    """Every column's AP equals sklearn's, including a constant-score column (AP = prevalence)."""
    y_true, scores = random_data(6, num_examples=40, num_classes=5, ties=True)
    scores[:, 2] = 0.5
    ap = metrics.average_precision_per_class(y_true, scores)
    np.testing.assert_allclose(ap, sklearn_average_precisions(y_true, scores), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ap[2], y_true[:, 2].mean(), rtol=0, atol=1e-12)


def test_map_single_example():
    """One example: its positive classes have AP 1, the others count 0."""
    y_true = np.array([[1, 0, 1, 0]])
    scores = np.array([[0.2, 0.9, 0.4, 0.1]])
    value = metrics.mean_average_precision(y_true, scores)
    assert abs(value - sklearn_map(y_true, scores)) < 1e-9
    assert abs(value - 50.0) < 1e-9


def test_map_class_without_positives_counts_zero():
    """A class with no positive has AP 0 and still counts in the mean."""
    y_true, scores = random_data(7, num_examples=30, num_classes=4)
    y_true[:, 3] = 0
    ap = metrics.average_precision_per_class(y_true, scores)
    assert ap[3] == 0.0
    value = metrics.mean_average_precision(y_true, scores)
    assert abs(value - sklearn_map(y_true, scores)) < 1e-9
    assert abs(value - 100.0 * ap[:3].sum() / 4) < 1e-9


def test_map_perfect_ranking_is_100():
    """Scores that rank every positive above every negative give 100."""
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = y_true + np.array([[0.1, 0.3], [0.2, 0.1], [0.05, 0.2], [0.4, 0.0]])
    assert abs(metrics.mean_average_precision(y_true, scores) - 100.0) < 1e-12


def test_map_float32_scores_and_bool_labels():
    """float32 scores and boolean labels give the same mAP as the sklearn loop."""
    y_true, scores = random_data(8)
    scores = scores.astype(np.float32)
    value = metrics.mean_average_precision(y_true.astype(bool), scores)
    assert abs(value - sklearn_map(y_true, scores)) < 1e-9


# --- F1 --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threshold", [0.5, 0.75])
def test_f1_matches_sklearn(seed, threshold):
    """Micro and macro F1 of scores >= threshold equal sklearn's (zero_division=0), in percent."""
    y_true, scores = random_data(seed, ties=True)  # ties: some scores sit exactly on 0.5 / 0.75
    y_pred = (scores >= threshold).astype(np.int64)
    micro, macro = metrics.f1_scores(y_true, scores, threshold)
    assert abs(micro - 100.0 * f1_score(y_true, y_pred, average="micro", zero_division=0)) < 1e-9
    assert abs(macro - 100.0 * f1_score(y_true, y_pred, average="macro", zero_division=0)) < 1e-9


def test_f1_threshold_is_inclusive():
    """A score exactly at the threshold is a predicted positive."""
    y_true = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.75, 0.1], [0.2, 0.7]])
    micro, macro = metrics.f1_scores(y_true, scores, 0.75)
    # class 0: tp=1 -> F1 1; class 1: fn=1 -> F1 0; micro: 2*1 / (2*1 + 0 + 1)
    assert abs(macro - 50.0) < 1e-12
    assert abs(micro - 100.0 * 2 / 3) < 1e-12


def test_f1_class_without_true_or_predicted_positives_counts_zero():
    """A class with no true and no predicted positive has F1 0 in the macro mean (sklearn zero_division=0)."""
    y_true = np.array([[1, 0], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.6]])
    y_pred = (scores >= 0.75).astype(np.int64)
    micro, macro = metrics.f1_scores(y_true, scores, 0.75)
    assert abs(macro - 50.0) < 1e-12  # (1 + 0) / 2
    assert abs(micro - 100.0) < 1e-12
    assert abs(macro - 100.0 * f1_score(y_true, y_pred, average="macro", zero_division=0)) < 1e-12
    # sklearn's zero_division=1 would count that class as 1: not our convention.
    assert abs(macro - 100.0 * f1_score(y_true, y_pred, average="macro", zero_division=1)) > 1.0


def test_f1_nothing_true_nothing_predicted_is_zero():
    """With no positive and no prediction anywhere, micro and macro F1 are 0 (no division by zero)."""
    y_true = np.zeros((3, 4))
    scores = np.full((3, 4), 0.1)
    assert metrics.f1_scores(y_true, scores, 0.75) == (0.0, 0.0)


# --- precision@k / recall@k -----------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_precision_recall_at_k_matches_loop(k, ties):
    """precision@k and recall@k equal the per-example loop (ties ranked by class index)."""
    y_true, scores = random_data(9, num_examples=40, num_classes=7, ties=ties)
    y_true[5] = 0  # an example without positives: left out of recall
    precision, recall = metrics.precision_recall_at_k(y_true, scores, k)
    expected_precision, expected_recall = loop_precision_recall_at_k(y_true, scores, k)
    assert abs(precision - expected_precision) < 1e-9
    assert abs(recall - expected_recall) < 1e-9


def test_precision_recall_at_k_hand_example():
    """A worked example: tie at the k-th place goes to the lower class index; k above C is capped."""
    y_true = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    scores = np.array([[0.5, 0.5, 0.9, 0.1], [0.2, 0.8, 0.3, 0.1], [0.4, 0.3, 0.2, 0.1]])
    # k=2: row 0 takes classes 2 and 0 (tie 0 vs 1 -> 0): 1 hit; row 1 takes 1, 2: 0 hits; row 2: 0 hits.
    precision, recall = metrics.precision_recall_at_k(y_true, scores, 2)
    assert abs(precision - 100.0 * (1 / 2 + 0 + 0) / 3) < 1e-12
    assert abs(recall - 100.0 * (1 / 2 + 0) / 2) < 1e-12
    # k=5 > C=4: every class is taken, precision = positives / 4.
    precision, recall = metrics.precision_recall_at_k(y_true, scores, 5)
    assert abs(precision - 100.0 * (2 / 4 + 1 / 4 + 0) / 3) < 1e-12
    assert abs(recall - 100.0) < 1e-12


# --- evaluate --------------------------------------------------------------------------


def test_evaluate_keys_and_values():
    """evaluate returns exactly the documented keys, each equal to its metric function at threshold 0.75."""
    y_true, scores = random_data(10, ties=True)
    result = metrics.evaluate(y_true, scores)
    expected_keys = {"map", "f1_micro", "f1_macro"}
    expected_keys |= {f"{kind}_at_{k}" for kind in ("precision", "recall") for k in (1, 3, 5)}
    assert set(result) == expected_keys
    assert result["map"] == metrics.mean_average_precision(y_true, scores)
    assert (result["f1_micro"], result["f1_macro"]) == metrics.f1_scores(y_true, scores, 0.75)
    assert (result["f1_micro"], result["f1_macro"]) != metrics.f1_scores(y_true, scores, 0.5)
    for k in (1, 3, 5):
        precision, recall = loop_precision_recall_at_k(y_true, scores, k)
        assert abs(result[f"precision_at_{k}"] - precision) < 1e-9
        assert abs(result[f"recall_at_{k}"] - recall) < 1e-9
    assert all(isinstance(value, float) for value in result.values())


def test_evaluate_threshold_argument():
    """evaluate's threshold reaches the F1 metrics."""
    y_true, scores = random_data(11, ties=True)
    result = metrics.evaluate(y_true, scores, threshold=0.5)
    assert (result["f1_micro"], result["f1_macro"]) == metrics.f1_scores(y_true, scores, 0.5)
