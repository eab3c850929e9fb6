"""PASCAL VOC 2012 as released (VOCtrainval_11-May-2012.tar), read as Cole et al.'s format_pascal.py does.

Per class, `ImageSets/Main/<class>_{train,val}.txt` lists every image with 1
(present), -1 (absent) or 0 (difficult only, which is NOT a positive). An image
enters a split only if it has at least one positive; images are ordered by file
name. Official train becomes our train/val, official val our test.
"""

import os

import numpy as np
import tensorflow as tf

from spml_tf.data.datasets import source
from spml_tf.core.errors import DataError

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
EXPECTED = {"train": 5717, "test": 5823}  # images with a positive, docs/method.md section 5


def find_root(raw_dir):
    """The VOC2012 directory: raw_dir/VOCdevkit/VOC2012, or raw_dir itself."""
    for candidate in (os.path.join(raw_dir, "VOCdevkit", "VOC2012"), raw_dir):
        if tf.io.gfile.isdir(os.path.join(candidate, "ImageSets", "Main")):
            return candidate
    raise DataError(
        f"no VOC 2012 in {raw_dir}: expected VOCdevkit/VOC2012/ImageSets/Main and JPEGImages "
        "(extract VOCtrainval_11-May-2012.tar there, or pass --download)"
    )


def read_image_set(root, image_set):
    """(sorted image file names, N x 20 labels) of `image_set` ("train" or "val")."""
    positives = {}  # file name -> class indices
    for c, name in enumerate(CLASS_NAMES):
        path = os.path.join(root, "ImageSets", "Main", f"{name}_{image_set}.txt")
        for number, line in enumerate(source.read_lines(path, f"VOC class list {name}_{image_set}.txt"), 1):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
                raise DataError(f"{path}:{number}: expected '<image id> <1|-1|0>', got {line!r}")
            if fields[1] == "1":
                positives.setdefault(fields[0] + ".jpg", []).append(c)
    files = sorted(positives)
    labels = np.zeros((len(files), len(CLASS_NAMES)), np.float32)
    for row, file in enumerate(files):
        labels[row, positives[file]] = 1.0
    return files, labels


def read(raw_dir):
    """The Source of VOC 2012: official train (to split) and official val as test."""
    root = find_root(raw_dir)
    image_dir = os.path.join(root, "JPEGImages")
    splits = {}
    for split, image_set in (("train", "train"), ("test", "val")):
        files, labels = read_image_set(root, image_set)
        splits[split] = source.SourceSplit(
            paths=tuple(os.path.join(image_dir, file) for file in files), ids=tuple(files), labels=labels)
    return source.Source(name="voc", class_names=CLASS_NAMES, train=splits["train"], test=splits["test"])
