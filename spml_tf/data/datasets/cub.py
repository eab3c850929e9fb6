"""CUB-200-2011's 312 binary attributes as labels, read as Cole et al.'s format_cub.py does.

`images.txt` gives the image order, `train_test_split.txt` the official split
(1 = train), `attributes/image_attribute_labels.txt` one line per (image,
attribute): image id, attribute id, is_present, certainty, time (a few lines of
the release carry an extra field; only the first three are read). The label of
(image, attribute) is is_present, whatever the certainty. Official train becomes
our train/val, official test our test.
"""

import os

import numpy as np
import tensorflow as tf

from spml_tf.data.datasets import source
from spml_tf.core.errors import DataError

EXPECTED = {"train": 5994, "test": 5794}


def find_root(raw_dir):
    """The CUB_200_2011 directory: raw_dir/CUB_200_2011, or raw_dir itself."""
    for candidate in (os.path.join(raw_dir, "CUB_200_2011"), raw_dir):
        if tf.io.gfile.exists(os.path.join(candidate, "images.txt")):
            return candidate
    raise DataError(f"no CUB-200-2011 in {raw_dir}: expected CUB_200_2011/images.txt (extract CUB_200_2011.tgz there)")


def _numbered(path, what, num_fields):
    """Lines of `path` split into fields, each line with at least `num_fields`; DataError naming the line if not."""
    rows = []
    for number, line in enumerate(source.read_lines(path, what), 1):
        fields = line.split()
        if len(fields) < num_fields:
            raise DataError(f"{path}:{number}: expected {num_fields} fields, got {line!r}")
        rows.append((number, fields))
    return rows


def _int(path, number, value):
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{number}: {value!r} is not an integer") from None


def read_attribute_names(root):
    """The 312 attribute names; attributes.txt sits next to CUB_200_2011/ in the release archive."""
    candidates = [os.path.join(root, "attributes.txt"), os.path.join(root, "attributes", "attributes.txt"),
                  os.path.join(os.path.dirname(root.rstrip("/")), "attributes.txt")]
    path = next((p for p in candidates if tf.io.gfile.exists(p)), candidates[0])
    return tuple(fields[1] for _, fields in _numbered(path, "CUB attribute list attributes.txt", 2))


def read(raw_dir):
    """The Source of CUB-200-2011 attributes: official train (to split) and official test."""
    root = find_root(raw_dir)
    class_names = read_attribute_names(root)
    images_path = os.path.join(root, "images.txt")
    images = [(_int(images_path, n, f[0]), f[1]) for n, f in _numbered(images_path, "CUB images.txt", 2)]
    row_of = {image_id: row for row, (image_id, _) in enumerate(images)}
    if len(row_of) != len(images):
        raise DataError(f"{images_path} lists an image id twice")

    split_path = os.path.join(root, "train_test_split.txt")
    is_train = np.full(len(images), -1)
    for number, fields in _numbered(split_path, "CUB train_test_split.txt", 2):
        image_id, flag = _int(split_path, number, fields[0]), fields[1]
        if image_id not in row_of or flag not in ("0", "1"):
            raise DataError(f"{split_path}:{number}: expected '<image id of images.txt> <0|1>', got {' '.join(fields)!r}")
        is_train[row_of[image_id]] = int(flag)
    if (is_train < 0).any():
        missing = images[int(np.flatnonzero(is_train < 0)[0])][0]
        raise DataError(f"{split_path} does not say whether image {missing} is train or test")

    labels_path = os.path.join(root, "attributes", "image_attribute_labels.txt")
    labels = np.zeros((len(images), len(class_names)), np.float32)
    seen = np.zeros(labels.shape, bool)
    for number, fields in _numbered(labels_path, "CUB attributes/image_attribute_labels.txt", 3):
        image_id, attribute = _int(labels_path, number, fields[0]), _int(labels_path, number, fields[1])
        if image_id not in row_of or not 1 <= attribute <= len(class_names) or fields[2] not in ("0", "1"):
            raise DataError(f"{labels_path}:{number}: expected '<image id> <attribute 1..{len(class_names)}> <0|1> ...', "
                            f"got {' '.join(fields)!r}")
        labels[row_of[image_id], attribute - 1] = float(fields[2])
        seen[row_of[image_id], attribute - 1] = True
    if not seen.all():
        row, attribute = np.argwhere(~seen)[0]
        raise DataError(f"{labels_path} has no line for image {images[row][0]}, attribute {attribute + 1}")

    image_dir = os.path.join(root, "images")
    splits = {}
    for split, flag in (("train", 1), ("test", 0)):
        rows = np.flatnonzero(is_train == flag)
        files = tuple(images[row][1] for row in rows)
        splits[split] = source.SourceSplit(
            paths=tuple(source.join(image_dir, file) for file in files), ids=files, labels=labels[rows])
    return source.Source(name="cub", class_names=class_names, train=splits["train"], test=splits["test"])
