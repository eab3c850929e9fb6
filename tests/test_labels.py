"""Tests for spml_tf.data.labels: the single-positive observation process, the split, the label check."""

import numpy as np
import pytest

from spml_tf.data import labels
from spml_tf.core.errors import DataError

# A small fixed full-label matrix: several positives per row, a row with no
# negative (row 2) and a row with a single positive (row 3).
FIXED_FULL = np.array(
    [
        [1, 1, 1, 0, 0, 0],
        [0, 1, 0, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 1],
        [1, 0, 1, 0, 1, 0],
        [1, 1, 0, 0, 1, 1],
        [0, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 0],
    ]
)
# The kept positive of each row with seed 1200: equal to the original code's
# output (Cole et al.'s observation process), computed once with it.
FIXED_KEPT_POSITIVE = [0, 4, 0, 5, 2, 5, 3, 0]


def loop_observe(full, seed=1200, num_negatives=0):
    """docs/method.md section 4: one RandomState(seed) consumed row by row; per row shuffle the
    positive indices and keep the first, then shuffle the negative indices and
    keep the first num_negatives as -1 (the shuffle is drawn even when none are kept)."""
    rng = np.random.RandomState(seed)
    observed = np.zeros(full.shape)
    for i in range(full.shape[0]):
        positive_indices = np.array([c for c in range(full.shape[1]) if full[i, c] == 1])
        rng.shuffle(positive_indices)
        if len(positive_indices):
            observed[i, positive_indices[0]] = 1.0
        negative_indices = np.array([c for c in range(full.shape[1]) if full[i, c] == 0], dtype=np.int64)
        rng.shuffle(negative_indices)
        for c in negative_indices[:num_negatives]:
            observed[i, c] = -1.0
    return observed


def random_full(seed, num_examples=200, num_classes=10, min_negatives=0):
    """A random 0/1 matrix with at least one positive (and min_negatives negatives) per row."""
    rng = np.random.default_rng(seed)
    full = (rng.random((num_examples, num_classes)) < 0.35).astype(np.int64)
    full[np.arange(num_examples), rng.integers(0, num_classes, num_examples)] = 1
    for i in range(num_examples):
        while (full[i] == 0).sum() < min_negatives:
            full[i, rng.choice(np.flatnonzero(full[i] == 1))] = 0
            if full[i].sum() == 0:
                full[i, 0] = 1
    return full


# --- observe_single_positive -----------------------------------------------------------


def test_observe_fixed_matrix_matches_original():
    """On a fixed matrix with seed 1200 the kept positives equal the original code's."""
    observed = labels.observe_single_positive(FIXED_FULL)
    expected = np.zeros(FIXED_FULL.shape)
    expected[np.arange(len(FIXED_KEPT_POSITIVE)), FIXED_KEPT_POSITIVE] = 1.0
    np.testing.assert_array_equal(observed, expected)
    np.testing.assert_array_equal(loop_observe(FIXED_FULL), expected)


@pytest.mark.parametrize("seed", [1200, 7])
def test_observe_matches_loop_statement(seed):
    """On a random matrix the result equals the loop statement of docs/method.md's procedure."""
    full = random_full(0)
    np.testing.assert_array_equal(labels.observe_single_positive(full, seed=seed), loop_observe(full, seed=seed))


def test_observe_default_seed_is_1200():
    """Without a seed argument the observation uses RandomState(1200)."""
    full = random_full(1)
    np.testing.assert_array_equal(labels.observe_single_positive(full), loop_observe(full, seed=1200))
    assert not np.array_equal(labels.observe_single_positive(full), loop_observe(full, seed=1201))


def test_observe_keeps_exactly_one_true_positive_per_row():
    """Every row has exactly one 1, at a true positive, and zeros elsewhere."""
    full = random_full(2)
    observed = labels.observe_single_positive(full)
    assert observed.shape == full.shape
    assert set(np.unique(observed)) <= {0.0, 1.0}
    np.testing.assert_array_equal((observed == 1).sum(axis=1), np.ones(full.shape[0]))
    assert np.all(full[observed == 1] == 1)


def test_observe_row_without_positive_raises():
    """A row with no positive raises DataError naming the row."""
    full = random_full(3, num_examples=6)
    full[4] = 0
    with pytest.raises(DataError, match="row 4"):
        labels.observe_single_positive(full)


def test_observe_allowed_empty_rows_leave_every_other_row_as_the_original_draws_it():
    """With allow_empty_rows an empty row stays unobserved and the RNG stream is the statement's."""
    full = random_full(5, num_examples=50)
    full[[3, 17, 40]] = 0
    observed = labels.observe_single_positive(full, allow_empty_rows=True, num_negatives=1)
    np.testing.assert_array_equal(observed, loop_observe(full, num_negatives=1))
    assert not (observed[[3, 17, 40]] == 1).any()


def test_observe_num_negatives_marks_two_true_negatives():
    """num_negatives=2 marks exactly 2 true negatives per row as -1, as in the loop statement."""
    full = random_full(4, min_negatives=2)
    observed = labels.observe_single_positive(full, num_negatives=2)
    np.testing.assert_array_equal((observed == -1).sum(axis=1), np.full(full.shape[0], 2))
    np.testing.assert_array_equal((observed == 1).sum(axis=1), np.ones(full.shape[0]))
    assert np.all(full[observed == -1] == 0)
    np.testing.assert_array_equal(observed, loop_observe(full, num_negatives=2))
    # The RNG stream is the same: the kept positives do not depend on num_negatives.
    np.testing.assert_array_equal(observed == 1, labels.observe_single_positive(full) == 1)


def test_observe_rejects_non_binary_full_labels():
    """A full label matrix with a value other than 0/1 raises DataError."""
    full = random_full(5, num_examples=4)
    full = full.astype(np.float64)
    full[2, 1] = 0.5
    with pytest.raises(DataError, match="0.5"):
        labels.observe_single_positive(full)


# --- train_val_split -------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_examples, num_train, num_val",
    [(5717, 4574, 1143), (82081, 65665, 16416), (5994, 4795, 1199), (10, 8, 2)],
)
def test_split_sizes(num_examples, num_train, num_val):
    """docs/method.md section 5 sizes: VOC 5717 -> 4574/1143, COCO 82081 -> 65665/16416, CUB 5994 -> 4795/1199."""
    train, val = labels.train_val_split(num_examples)
    assert (len(train), len(val)) == (num_train, num_val)


def test_split_sorted_disjoint_and_complete():
    """Both index arrays are sorted, disjoint, and together cover every example once."""
    train, val = labels.train_val_split(5717)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(5717))


def test_split_matches_original_indices():
    """First and last indices for VOC's 5717 equal the original code's split (seed 1200)."""
    train, val = labels.train_val_split(5717)
    # Equal to the original code's output.
    np.testing.assert_array_equal(train[:8], [0, 1, 2, 3, 4, 7, 8, 9])
    np.testing.assert_array_equal(val[:8], [5, 6, 11, 15, 22, 23, 29, 34])
    np.testing.assert_array_equal(train[-3:], [5713, 5714, 5716])
    np.testing.assert_array_equal(val[-3:], [5709, 5712, 5715])


def test_split_matches_statement():
    """val = sorted last 20% of RandomState(1200).permutation(N), train = sorted first 80%."""
    num_examples = 1000
    permutation = np.random.RandomState(1200).permutation(num_examples)
    num_val = int(np.round(0.2 * num_examples))
    train, val = labels.train_val_split(num_examples)
    np.testing.assert_array_equal(train, np.sort(permutation[: num_examples - num_val]))
    np.testing.assert_array_equal(val, np.sort(permutation[num_examples - num_val :]))


# --- check_label_matrix ----------------------------------------------------------------


@pytest.mark.parametrize("bad_value, shown", [(2, "2"), (-1, "-1"), (0.5, "0.5"), (np.nan, "nan")])
def test_check_label_matrix_names_bad_value(bad_value, shown):
    """A value outside `allowed` raises DataError naming the value, its position and what was checked."""
    matrix = np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float64)
    matrix[1, 3] = bad_value
    with pytest.raises(DataError, match="full labels") as error:
        labels.check_label_matrix(matrix, "full labels", allowed=(0, 1))
    message = str(error.value)
    assert shown in message
    assert "example 1, class 3" in message


def test_check_label_matrix_reports_first_bad_entry():
    """With several bad entries, the first in row-major order is named."""
    matrix = np.array([[0, 1, 0], [1, 7, 3]])
    with pytest.raises(DataError, match="example 1, class 1"):
        labels.check_label_matrix(matrix, "full labels", allowed=(0, 1))


def test_check_label_matrix_rejects_non_2d():
    """A 1-D array raises DataError naming its shape."""
    with pytest.raises(DataError, match=r"\(4,\)"):
        labels.check_label_matrix(np.array([0, 1, 1, 0]), "full labels", allowed=(0, 1))


def test_check_label_matrix_accepts_valid_matrix():
    """A matrix of allowed values (any numeric dtype) passes silently."""
    labels.check_label_matrix(np.array([[0, 1], [1, 1]]), "full labels", allowed=(0, 1))
    labels.check_label_matrix(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32), "full labels", allowed=(0, 1))
    labels.check_label_matrix(np.array([[True, False]]), "full labels", allowed=(0, 1))
