"""The embedded dataset: multi-label mosaics of scikit-learn's bundled handwritten digits.

Each image is a 3x3 grid of 8x8 digit scans holding 2 to 6 distinct classes
(of 10): a 24x24 RGB PNG. Scans for train and test
mosaics come from disjoint halves of the 1,797 scans. It then goes
through exactly the path of a real dataset: single-positive observation of
the official train set (seed 1200) -> 80/20 train/val split -> TFRecord
shards and manifests, built once into a cache directory and reused.
"""

import os
import shutil

import numpy as np
import tensorflow as tf

from spml_tf import labels, records

CLASS_NAMES = tuple(str(digit) for digit in range(10))
NUM_OFFICIAL_TRAIN = 6000
NUM_TEST = 2000
GRID = 3  # cells per side
# Distinct classes per image. At least two, so every training image hides a
# positive: the case assume-negative gets wrong and EM is built for. (With
# 2x2 grids of 1 to 4 classes, assume-negative came within 3 mAP of full labels
# on our small CNN: too easy to tell the methods apart.)
MIN_CLASSES, MAX_CLASSES = 2, 6
SCALE = 1  # pixels per scan pixel
SEED = 0  # of the mosaics; observation and split use the SPEC's seed 1200
VERSION = 5  # bump when the images change, so stale caches are rebuilt
SHARD_SIZE_MB = 1  # several small shards, so training interleaves them like a real dataset


def _scan_pools():
    """(images, targets) of the train half and the test half of the 1,797 scans."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    permutation = np.random.RandomState(SEED).permutation(len(images))
    halves = np.array_split(permutation, 2)
    return [(images[half], bunch.target[half]) for half in halves]


def make_mosaics(num_images, scans, targets, rng):
    """(images uint8 [N, S, S, 3] with S = 8 * GRID * SCALE, labels float32 [N, 10]) from one pool of scans."""
    by_class = [np.flatnonzero(targets == c) for c in range(len(CLASS_NAMES))]
    images = np.zeros((num_images, 8 * GRID, 8 * GRID), np.uint8)
    num_cells = GRID * GRID
    label_matrix = np.zeros((num_images, len(CLASS_NAMES)), np.float32)
    for i in range(num_images):  # build time only, a few thousand tiny images
        num_classes = rng.randint(MIN_CLASSES, MAX_CLASSES + 1)
        classes = rng.choice(len(CLASS_NAMES), num_classes, replace=False)
        # Every chosen class fills one cell; the other cells repeat chosen classes.
        cells = np.concatenate([classes, rng.choice(classes, num_cells - num_classes)])
        rng.shuffle(cells)
        for cell, c in enumerate(cells):
            row, col = 8 * (cell // GRID), 8 * (cell % GRID)
            images[i, row : row + 8, col : col + 8] = scans[rng.choice(by_class[c])]
        label_matrix[i, classes] = 1.0
    images = np.repeat(np.repeat(images, SCALE, axis=1), SCALE, axis=2)
    return np.repeat(images[..., None], 3, axis=3), label_matrix


def _examples(images, ids, full, observed):
    for image, image_id, full_row, observed_row in zip(images, ids, full, observed):
        yield tf.io.encode_png(image).numpy(), image_id, full_row, observed_row


def build(directory, observed_negatives=0):
    """Writes train, val and test splits into `directory` (replacing it atomically)."""
    rng = np.random.RandomState(SEED)
    (train_scans, train_targets), (test_scans, test_targets) = _scan_pools()
    train_images, train_full = make_mosaics(NUM_OFFICIAL_TRAIN, train_scans, train_targets, rng)
    test_images, test_full = make_mosaics(NUM_TEST, test_scans, test_targets, rng)
    train_observed = labels.observe_single_positive(train_full, num_negatives=observed_negatives)
    train_idx, val_idx = labels.train_val_split(NUM_OFFICIAL_TRAIN)
    train_ids = np.array([f"digits_train_{i:05d}" for i in range(NUM_OFFICIAL_TRAIN)])
    test_ids = [f"digits_test_{i:05d}" for i in range(NUM_TEST)]

    partial = f"{directory}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for split, rows in (("train", train_idx), ("val", val_idx)):
        records.write_split(
            os.path.join(partial, split), dataset="digits", split=split, class_names=CLASS_NAMES,
            examples=_examples(train_images[rows], train_ids[rows], train_full[rows], train_observed[rows]),
            shard_size_mb=SHARD_SIZE_MB,
        )
    # Test images carry full labels only: nothing is hidden, observed = full.
    records.write_split(
        os.path.join(partial, "test"), dataset="digits", split="test", class_names=CLASS_NAMES,
        examples=_examples(test_images, test_ids, test_full, test_full), shard_size_mb=SHARD_SIZE_MB,
    )
    with open(os.path.join(partial, "VERSION"), "w") as f:
        f.write(_version(observed_negatives))
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    os.replace(partial, directory)


def _version(observed_negatives):
    return f"{VERSION} observed_negatives={observed_negatives}"


def ensure(directory, observed_negatives=0):
    """Builds the dataset into `directory` unless a complete build of this version is there."""
    version_file = os.path.join(directory, "VERSION")
    if os.path.exists(version_file):
        with open(version_file) as f:
            if f.read().strip() == _version(observed_negatives):
                return
    print(f"Building the embedded digits dataset in {directory} (once) ...", flush=True)
    build(directory, observed_negatives)
