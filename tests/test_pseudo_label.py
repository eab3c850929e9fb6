"""Tests for one APL round (spml_tf.methods.em) and the label bank's encoding check."""

import math

import numpy as np
import pytest
import tensorflow as tf

from spml_tf.methods import em as pseudo_label
from spml_tf.core.errors import DataError
from spml_tf.training.label_bank import LabelBank, check_encoding

# --- Independent statement ---------------------------------------------------------------


def loop_apl_round(labels, probs, initial_unannotated, neg_proportion, num_epochs, warmup_epoch):
    """docs/method.md section 3, one class at a time: among entries still 0, the
    floor(theta * U_c / (T_t - T_w)) with the lowest p (ties: lower example
    index first) become -p."""
    out = labels.copy()
    for c in range(labels.shape[1]):
        count = math.floor(neg_proportion * initial_unannotated[c] / (num_epochs - warmup_epoch))
        candidates = [i for i in range(labels.shape[0]) if labels[i, c] == 0]
        candidates.sort(key=lambda i: (probs[i, c], i))
        for i in candidates[:count]:
            out[i, c] = -probs[i, c]
    return out


# --- A hand-worked round -----------------------------------------------------------------

# theta = 0.9, T_t = 4, T_w = 2: two rounds, so per round floor(0.45 * U_c).
HAND_LABELS = np.array(
    [
        [1, 0, 0],
        [0, -0.05, 0],  # (1, 1) was pseudo-labelled in an earlier round
        [0, 1, 0],
        [0, 0, 0],
        [0, 0, 1],
        [0, 0, 1],
    ],
    dtype=np.float32,
)
HAND_PROBS = np.array(
    [
        [0.01, 0.40, 0.60],  # (0, 0): lowest p of column 0, but a positive: never touched
        [0.30, 0.01, 0.70],  # (1, 1): lowest p of column 1, already -0.05: not chosen again
        [0.10, 0.90, 0.15],
        [0.20, 0.05, 0.90],  # (3, 0) and (4, 0) tie at 0.20: example 3 wins
        [0.20, 0.30, 0.00],
        [0.50, 0.20, 0.02],
    ],
    dtype=np.float32,
)
# U = [5, 5, 4] unannotated entries per class before any pseudo-labelling
# -> per round floor(2.25) = 2, floor(2.25) = 2, floor(1.8) = 1 (rounding would give 2).
HAND_INITIAL_UNANNOTATED = np.array([5, 5, 4])
HAND_EXPECTED = np.array(
    [
        [1, 0, 0],
        [0, -0.05, 0],
        [-0.10, 1, -0.15],
        [-0.20, -0.05, 0],
        [0, 0, 1],
        [0, -0.20, 1],
    ],
    dtype=np.float32,
)


def test_apl_round_hand_worked_example():
    """Lowest p per class becomes -p: tie by example index, old pseudo-label and positives kept, floor count."""
    out = pseudo_label.apl_round(HAND_LABELS, HAND_PROBS, HAND_INITIAL_UNANNOTATED, 0.9, 4, 2)
    np.testing.assert_array_equal(out, HAND_EXPECTED)


def test_apl_round_hand_example_agrees_with_loop():
    """The loop statement gives the same hand-worked matrix (checks the statement itself)."""
    out = loop_apl_round(HAND_LABELS, HAND_PROBS, HAND_INITIAL_UNANNOTATED, 0.9, 4, 2)
    np.testing.assert_array_equal(out, HAND_EXPECTED)


def test_apl_round_does_not_modify_inputs():
    """The input label and probability arrays are unchanged and a new array is returned."""
    labels = HAND_LABELS.copy()
    probs = HAND_PROBS.copy()
    unannotated = HAND_INITIAL_UNANNOTATED.copy()
    out = pseudo_label.apl_round(labels, probs, unannotated, 0.9, 4, 2)
    assert out is not labels
    np.testing.assert_array_equal(labels, HAND_LABELS)
    np.testing.assert_array_equal(probs, HAND_PROBS)
    np.testing.assert_array_equal(unannotated, HAND_INITIAL_UNANNOTATED)


def test_apl_round_zero_probability_stays_marked():
    """A chosen entry with p == 0 is stored as a tiny negative, so it does not read as unannotated (0) again."""
    labels = np.array([[1.0], [0.0], [0.0]], dtype=np.float32)
    probs = np.array([[0.5], [0.0], [0.3]], dtype=np.float32)
    out = pseudo_label.apl_round(labels, probs, np.array([2]), 1.0, 2, 0)  # floor(1 * 2 / 2) = 1 per round
    assert -1e-30 < out[1, 0] < 0.0
    assert out[2, 0] == 0.0
    again = pseudo_label.apl_round(out, probs, np.array([2]), 1.0, 2, 0)
    np.testing.assert_array_equal(again[:, 0], np.array([1.0, out[1, 0], -0.3], dtype=np.float32))


# --- Random inputs against the loop ------------------------------------------------------


def random_problem(seed, num_examples=40, num_classes=6):
    """Float32 labels (one positive per row) and probabilities in (0, 1] with many ties."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((num_examples, num_classes), dtype=np.float32)
    labels[np.arange(num_examples), rng.integers(0, num_classes, num_examples)] = 1.0
    probs = (rng.integers(1, 21, size=(num_examples, num_classes)) / 20.0).astype(np.float32)
    return labels, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("neg_proportion, num_epochs, warmup_epoch", [(0.9, 10, 5), (0.9, 10, 3), (0.5, 6, 4)])
def test_apl_rounds_match_loop(seed, neg_proportion, num_epochs, warmup_epoch):
    """Every round of a full APL schedule equals the loop statement, fed the previous round's output."""
    labels, probs = random_problem(seed)
    initial_unannotated = (labels == 0).sum(axis=0)
    rng = np.random.default_rng(seed + 100)
    expected = labels.copy()
    for _ in range(num_epochs - warmup_epoch):
        expected = loop_apl_round(expected, probs, initial_unannotated, neg_proportion, num_epochs, warmup_epoch)
        labels = pseudo_label.apl_round(labels, probs, initial_unannotated, neg_proportion, num_epochs, warmup_epoch)
        np.testing.assert_array_equal(labels, expected)
        # The model's predictions change between rounds.
        probs = np.clip(probs + rng.normal(0, 0.05, probs.shape), 0.01, 1.0).astype(np.float32)


def test_apl_schedule_reaches_theta_without_positive_pseudo_labels():
    """After T_t - T_w rounds, sum_c rounds * floor(theta U_c / rounds) entries are -p and positives are unchanged."""
    labels, probs = random_problem(3, num_examples=100, num_classes=5)
    initial_unannotated = (labels == 0).sum(axis=0)
    out = labels
    for _ in range(5):
        out = pseudo_label.apl_round(out, probs, initial_unannotated, 0.9, 10, 5)
    per_round = np.floor(0.9 * initial_unannotated / 5)
    np.testing.assert_array_equal((out < 0).sum(axis=0), 5 * per_round)
    np.testing.assert_array_equal(out == 1, labels == 1)
    assert np.all(out[labels == 0] <= 0)
    np.testing.assert_array_equal(out[out < 0], -probs[out < 0])


# --- negatives_per_round -------------------------------------------------------------------


def test_negatives_per_round_is_floor():
    """floor(theta * U_c / rounds): 1.8 -> 1, 2.25 -> 2, 0.45 -> 0, 4.05 -> 4 (not rounded)."""
    counts = pseudo_label.negatives_per_round(np.array([4, 5, 1, 9, 0]), 0.9, 2)
    np.testing.assert_array_equal(counts, [1, 2, 0, 4, 0])
    assert np.issubdtype(counts.dtype, np.integer)


def test_negatives_per_round_voc_like_counts():
    """Against math.floor for a spread of counts and five rounds (T_t=10, T_w=5)."""
    initial = np.arange(0, 5000, 37)
    counts = pseudo_label.negatives_per_round(initial, 0.9, 5)
    np.testing.assert_array_equal(counts, [math.floor(0.9 * u / 5) for u in initial])


# --- Label bank encoding -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1.5, -1.01, np.nan, 0.5, np.inf, -np.inf, -1.5])
def test_check_encoding_rejects(bad):
    """Values outside {1, 0, -1, -s with 0 <= s < 1} raise DataError naming the position."""
    matrix = np.array([[1.0, 0.0], [-0.3, 0.0]], dtype=np.float32)
    matrix[1, 1] = bad
    with pytest.raises(DataError, match="example 1, class 1"):
        check_encoding(matrix, "label bank")


def test_check_encoding_accepts_valid_values():
    """1, 0, -0.0, -0.3, a tiny negative, -0.999 and -1 (an observed negative) pass."""
    tiny = np.finfo(np.float32).tiny
    check_encoding(np.array([[1.0, 0.0, -0.3, -1.0], [-0.0, -tiny, -0.999, 0.0]], dtype=np.float32), "label bank")


def test_label_bank_rejects_bad_initial_labels_and_updates():
    """LabelBank refuses an out-of-encoding matrix at creation and at assign, and a wrong shape at assign."""
    with pytest.raises(DataError):
        LabelBank(np.array([[1.0, -1.5]], dtype=np.float32))
    bank = LabelBank(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    with pytest.raises(DataError):
        bank.assign(np.array([[1.0, 0.5], [0.0, 1.0]], dtype=np.float32))
    with pytest.raises(ValueError):
        bank.assign(np.zeros((3, 2), dtype=np.float32))
    np.testing.assert_array_equal(bank.numpy(), [[1.0, 0.0], [0.0, 1.0]])


def test_label_bank_lookup_and_assign():
    """lookup gathers rows for float or int indices; assign replaces the values."""
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [-0.2, 1.0]], dtype=np.float32)
    bank = LabelBank(labels)
    assert bank.shape == (3, 2)
    np.testing.assert_array_equal(bank.lookup(tf.constant([[2.0], [0.0]])).numpy(), labels[[2, 0]])
    np.testing.assert_array_equal(bank.lookup(np.array([1, 1], dtype=np.int64)).numpy(), labels[[1, 1]])
    after = pseudo_label.apl_round(labels, np.full((3, 2), 0.1, dtype=np.float32), np.array([2, 1]), 1.0, 2, 0)
    bank.assign(after)
    np.testing.assert_array_equal(bank.numpy(), after)


class _FixedPredictor:
    """Stands in for evaluation.Predictor: the same probabilities for every call."""

    def __init__(self, probs):
        self.probs = probs

    def probabilities(self, dataset, num_examples):
        assert num_examples == len(self.probs)
        return self.probs


def test_the_callback_does_not_count_annotated_negatives_as_pseudo_negatives():
    """With --observed_negatives the bank holds -1 (annotated negatives): APL's counts and precision leave them out."""
    observed = np.array([[1, -1, 0, 0], [0, 1, -1, 0], [0, 0, 1, 0]], np.float32)
    full = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0]], np.float32)
    probs = np.array([[0.9, 0.1, 0.2, 0.8], [0.3, 0.9, 0.1, 0.05], [0.4, 0.2, 0.9, 0.3]], np.float32)
    bank = LabelBank(observed)
    callback = pseudo_label.APLCallback(_FixedPredictor(probs), bank, None, full, warmup_epochs=1, num_epochs=2,
                                        neg_proportion=1.0)
    logs = {}
    callback.on_epoch_end(0, logs)
    after = bank.numpy()
    new = (after < 0) & (observed == 0)
    assert int(new.sum()) == 7  # every unannotated entry, in one round (theta 1, one round)
    record = callback.rounds[0]
    assert record["new_pseudo_negatives"] == 7 and record["total_pseudo_negatives"] == 7  # not 9: two are -1
    expected_precision = 100.0 * float((full[new] == 0).mean())
    assert record["precision"] == record["total_precision"] == pytest.approx(expected_precision)
    assert (after[observed == -1] == -1).all()  # the annotated negatives stay as they were
    assert logs["apl_total_pseudo_negatives"] == 7


def test_a_prediction_of_exactly_one_stays_a_pseudo_negative():
    labels = np.array([[1, 0]], np.float32)
    out = pseudo_label.apl_round(labels, np.array([[1.0, 1.0]], np.float32), np.array([0, 1]), 1.0, 2, 1)
    assert -1 < out[0, 1] < 0 and pseudo_label.is_pseudo_negative(out)[0, 1]
