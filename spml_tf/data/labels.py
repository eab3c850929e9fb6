"""The single-positive observation process and the train/val split (docs/method.md section 4).

Both reproduce the original code's random draws bit for bit, so observed
labels made here equal the files the original code ships for the same data.
"""

import numpy as np

from spml_tf.core.errors import DataError

# Seed of the single-positive observation process and of the train/val split: fixed by the original code, so our
# observed labels equal its files.
OBSERVATION_SEED = 1200
VAL_FRACTION = 0.2


def observe_single_positive(full_labels, seed=OBSERVATION_SEED, num_negatives=0, allow_empty_rows=False):
    """Keeps one positive per row, chosen at random; everything else becomes unannotated (0).

    One RandomState is consumed row by row, as in Cole et al.'s code: shuffle
    the row's positive indices and keep the first, then shuffle its negative
    indices and keep the first `num_negatives` as observed negatives (-1).
    The negative shuffle happens even when none are kept, because the original
    draws it, and skipping it would change every later row.

    A row without a positive is an error, unless `allow_empty_rows`: then it
    stays unobserved and draws what the original draws for it (nothing for
    its positives), so every other row is still bit-identical. The converter
    uses this to report such rows, or drop them, without shifting the others.
    """
    full_labels = np.asarray(full_labels)
    check_label_matrix(full_labels, "full labels", allowed=(0, 1))
    rng = np.random.RandomState(seed)
    observed = np.zeros(full_labels.shape, dtype=np.float32)
    for i, row in enumerate(full_labels):  # sequential by nature: one RNG stream
        positives = np.nonzero(row == 1)[0]
        if positives.size == 0 and not allow_empty_rows:
            raise DataError(f"row {i} of the full label matrix has no positive label")
        rng.shuffle(positives)
        observed[i, positives[:1]] = 1.0
        negatives = np.nonzero(row == 0)[0]
        rng.shuffle(negatives)
        observed[i, negatives[:num_negatives]] = -1.0
    return observed


def train_val_split(num_examples, val_fraction=VAL_FRACTION, seed=OBSERVATION_SEED):
    """Sorted (train, val) indices of the official train set: the last val_fraction of a permutation is val."""
    num_val = int(np.round(val_fraction * num_examples))
    permutation = np.random.RandomState(seed).permutation(num_examples)
    return np.sort(permutation[: num_examples - num_val]), np.sort(permutation[num_examples - num_val :])


def check_label_matrix(labels, what, allowed):
    """Raises DataError naming the first entry of `labels` whose value is not in `allowed`."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"{what} must be a 2-D matrix (examples x classes), got shape {labels.shape}")
    bad = ~np.isin(labels, allowed)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{what}: value {float(labels[row, col])!r} at example {row}, class {col} is not one of {sorted(allowed)}"
        )
