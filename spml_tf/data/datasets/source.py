"""What a raw dataset reader hands the converter: images, labels and the problems found reading them."""

import dataclasses
import io
import os

import numpy as np
import tensorflow as tf

from spml_tf.core.errors import DataError, UsageError


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad input: which split and row, the image, and why it cannot be used."""

    split: str
    row: int  # position in the split's reading order
    image: str
    reason: str

    def __str__(self):
        return f"{self.split}: {self.image}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class SourceSplit:
    """The images of one split in the original code's order, and their labels."""

    paths: tuple  # where each image file is (any tf.io.gfile path)
    ids: tuple  # stored as image/id: the path relative to the image root, as Cole et al.'s files hold it
    labels: np.ndarray  # N x C in {0, 1}

    def __post_init__(self):
        if not len(self.paths) == len(self.ids) == len(self.labels):
            raise ValueError("paths, ids and labels must have one entry per image")

    def __len__(self):
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset as released: its class list, official train set, and test set.

    `val` is None when validation is carved out of the official train set
    (docs/method.md section 4); a user's own data may bring its own. For the official
    datasets `train.labels` are the FULL labels, from which the converter
    makes the single-positive observed ones. For a user's own data they are
    already the observed positives and the full labels are unknown
    (`train_labels_are_full` False).
    """

    name: str
    class_names: tuple
    train: SourceSplit
    test: SourceSplit = None
    val: SourceSplit = None
    train_labels_are_full: bool = True
    problems: tuple = ()  # label-level bad input found while reading (unknown class names, ...)


# --- Reading files through tf.io.gfile (local paths, gs://, ...) ---------------------------


def require_file(path, what):
    """DataError naming `what` is expected where, unless `path` exists."""
    if not tf.io.gfile.exists(path):
        raise DataError(f"{what} not found: {path}")
    return path


def read_lines(path, what):
    """The non-empty lines of a text file, stripped of the line end."""
    require_file(path, what)
    with tf.io.gfile.GFile(path, "r") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def read_npy(path, what):
    """A .npy array, never unpickling (a pickled file could run code)."""
    require_file(path, what)
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:  # pickled object arrays, truncated files
        raise DataError(f"{path} is not a plain .npy array ({error})") from None


def join(root, relative):
    """`relative` under `root`; refuses names that climb out of it (../, absolute paths), and on a local disk
    names whose symbolic links lead out of it (links are resolved before the check)."""
    normalized = os.path.normpath(relative)
    if os.path.isabs(relative) or normalized == ".." or normalized.startswith(".." + os.sep):
        raise DataError(f"image path {relative!r} must be relative to the image root and stay inside it")
    path = os.path.join(root, relative)
    if "://" not in root:
        real_root, real_path = os.path.realpath(root), os.path.realpath(path)
        if os.path.commonpath([real_root, real_path]) != real_root:
            raise DataError(f"image path {relative!r} is a link to {real_path}, outside the image root {root}")
    return path


def require_dir(path, flag, expected):
    if not tf.io.gfile.isdir(path):
        raise UsageError(f"{flag}={path!r} is not a directory; expected {expected}")
