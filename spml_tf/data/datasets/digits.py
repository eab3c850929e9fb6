"""The embedded dataset: multi-label mosaics of scikit-learn's bundled handwritten digits.

Each image is a 3x3 grid of 8x8 digit scans holding 2 to 6 distinct classes
(of 10): a 24x24 RGB PNG. Scans for train and test
mosaics come from disjoint halves of the 1,797 scans. It then goes
through exactly the path of a real dataset: PNG files, single-positive
observation of the official train set (seed 1200) -> 80/20 train/val split ->
TFRecord shards and manifests by the converter's shard writer, built once
into a cache directory and reused.
"""

import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf

from spml_tf.core import file_lock, files
from spml_tf.data import labels, records, shard_writer
from spml_tf.data.shard_writer import SplitInput
from spml_tf.core.errors import DataError, UsageError, reason

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
SEED = 0  # of the mosaics; observation and split use the protocol's seed 1200 (docs/method.md section 4)
VERSION = 6  # bump when the build changes, so stale caches are rebuilt (6: written by the converter's shard writer)
SHARD_SIZE_MB = 1  # several small shards, so training interleaves them like a real dataset
# Written first into a directory the build owns: only such a directory (or a new or empty one) is ever written to.
MARK = "SPML_TF_DIGITS"
LOCK = ".lock"  # held while building, so two runs never build into the same directory at once
BUILD_WAIT_SECONDS = 600  # a build takes about 20 s; waiting longer for another process's means it is stuck
VERSION_FILE = "VERSION"  # written last: a directory with the current VERSION holds a complete build
IMAGES = "images"  # the mosaics as PNG files, which the converter's shard writer reads
OWN_ENTRIES = ("train", "val", "test", IMAGES, VERSION_FILE, MARK, LOCK, "vl_scores")  # spml-vl-scores' too
_LEGACY_VERSION = re.compile(r"\d+ observed_negatives=\d+")  # a build made before MARK existed


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


def _write_pngs(directory, images, ids):
    """The images as PNG files under `directory`, named by id; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for image, image_id in zip(images, ids):
        paths.append(os.path.join(directory, f"{image_id}.png"))
        with open(paths[-1], "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
    return paths


def build(directory, observed_negatives=0, log=print):
    """Writes the images, then train, val and test splits with the converter's shard writer, into `directory`,
    which must be ours (see `ensure`)."""
    rng = np.random.RandomState(SEED)
    (train_scans, train_targets), (test_scans, test_targets) = _scan_pools()
    train_images, train_full = make_mosaics(NUM_OFFICIAL_TRAIN, train_scans, train_targets, rng)
    test_images, test_full = make_mosaics(NUM_TEST, test_scans, test_targets, rng)
    train_observed = labels.observe_single_positive(train_full, num_negatives=observed_negatives)
    train_idx, val_idx = labels.train_val_split(NUM_OFFICIAL_TRAIN)
    train_ids = np.array([f"digits_train_{i:05d}" for i in range(NUM_OFFICIAL_TRAIN)], dtype=object)
    test_ids = [f"digits_test_{i:05d}" for i in range(NUM_TEST)]

    _check_own(directory)
    os.makedirs(directory, exist_ok=True)
    _take(directory)
    _remove_own_build(directory)
    train_paths = np.array(_write_pngs(os.path.join(directory, IMAGES, "train"), train_images, train_ids))
    test_paths = _write_pngs(os.path.join(directory, IMAGES, "test"), test_images, test_ids)
    splits = [SplitInput(split, tuple(train_paths[rows]), tuple(train_ids[rows]), train_full[rows],
                         train_observed[rows]) for split, rows in (("train", train_idx), ("val", val_idx))]
    # Test images carry full labels only: nothing is hidden, observed = full.
    splits.append(SplitInput("test", tuple(test_paths), tuple(test_ids), test_full, test_full))
    shard_writer.write_splits(directory, "digits", CLASS_NAMES, splits, shard_size_mb=SHARD_SIZE_MB, log=log)
    files.write_text(os.path.join(directory, VERSION_FILE), _version(observed_negatives))


def _version(observed_negatives):
    return f"{VERSION} observed_negatives={observed_negatives}"


def _read_version(directory):
    try:
        with open(os.path.join(directory, VERSION_FILE)) as f:
            return f.read().strip()
    except OSError:
        return None


def ensure(directory, observed_negatives=0, log=print):
    """Builds the dataset into `directory` unless a complete build of this version is there.

    Writes only into a new or empty directory, or one holding its own build
    (finished, outdated or half-written); any other directory is a user's and
    is refused with a UsageError, untouched.
    """
    if _read_version(directory) == _version(observed_negatives) and _is_own(directory):
        return
    _check_own(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        _take(directory)  # before the lock file: the directory is never unmarked with something of ours in it
    except OSError as error:
        raise UsageError(f"cannot build the digits dataset in {directory} ({error.strerror}): pass --data_dir=<a "
                         "directory you can write>, or set SPML_TF_DATA") from None

    def wait(pid):
        log(f"Waiting for process {pid}, which is building the digits dataset in {directory} ...")

    try:
        lock = file_lock.acquire(os.path.join(directory, LOCK), on_wait=wait, timeout=BUILD_WAIT_SECONDS)
    except file_lock.Busy as busy:
        raise DataError(f"gave up after {BUILD_WAIT_SECONDS:g} s waiting for process {busy.pid} to finish building "
                        f"the digits dataset in {directory}; if it is stuck, stop it and run again") from None
    with lock:
        if _read_version(directory) == _version(observed_negatives):
            return  # built by the process we waited for
        log(f"Building the embedded digits dataset in {directory} (once) ...")
        try:
            build(directory, observed_negatives, log)
        except (OSError, tf.errors.OpError) as error:  # a full disk, a file-size limit
            raise DataError(f"could not build the digits dataset in {directory} ({reason(error)}); free space and "
                            "run again: the half-written build is replaced") from None


def _is_own(directory):
    """Whether `directory` holds the digits build (marked, or a build from before the mark) and nothing else."""
    if not os.path.isdir(directory):
        return False
    entries = set(os.listdir(directory))
    if not entries <= set(OWN_ENTRIES):
        return False
    return MARK in entries or bool(_LEGACY_VERSION.fullmatch(_read_version(directory) or ""))


def _check_own(directory):
    """UsageError unless `directory` is missing, empty, or the digits build's own."""
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise UsageError(f"--data_dir={directory!r} is a file; the digits build needs a directory")
    entries = os.listdir(directory)
    if not entries or _is_own(directory):
        return
    stored = _stored_dataset(directory)
    if stored:
        raise UsageError(f"{directory} holds a dataset that is not the digits build ({stored!r}); did you mean "
                         f"--dataset={stored if stored in ('voc', 'coco', 'nuswide', 'cub') else 'custom'}? "
                         "Nothing in it was touched")
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise UsageError(f"--data_dir={directory!r} holds files the digits build did not write ({shown}); it builds "
                     "only into a new or empty directory (or its own). Nothing in it was touched")


def _stored_dataset(directory):
    """The dataset named by a converted train split's manifest in `directory`, or None."""
    try:
        with open(os.path.join(directory, "train", records.MANIFEST)) as f:
            return str(json.load(f)["dataset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _take(directory):
    """Marks `directory` as the digits build's (before anything else is written into it)."""
    path = os.path.join(directory, MARK)
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("This directory holds the embedded digits dataset of spml-tf; it may be deleted and rebuilt.\n")


def _remove_own_build(directory):
    """Deletes an earlier (outdated or half-written) build: only the entries the build itself writes."""
    for name in ("train", "val", "test", IMAGES):
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    if os.path.exists(os.path.join(directory, VERSION_FILE)):
        os.remove(os.path.join(directory, VERSION_FILE))
