"""Cole et al.'s formatted files: `formatted_{train,val}_{images,labels}.npy` over a directory of images.

This is the interchange format of the field (NUS-WIDE is only distributed this
way): `formatted_train_*` is the official train set (full 0/1 labels, split
80/20 into train/val here), `formatted_val_*` the test set. Image paths are
relative to the image root. Files are read with allow_pickle=False.
"""

import os

import numpy as np

from spml_tf.data import labels as labels_lib
from spml_tf.data.datasets import source
from spml_tf.core.errors import DataError

# NUS-WIDE's Concepts81.txt (alphabetical), the column order of Cole et al.'s nuswide files.
NUSWIDE_CLASS_NAMES = tuple(
    "airport animal beach bear birds boats book bridge buildings cars castle cat cityscape clouds computer coral "
    "cow dancing dog earthquake elk fire fish flags flowers food fox frost garden glacier grass harbor horses house "
    "lake leaf map military moon mountain nighttime ocean person plane plants police protest railroad rainbow "
    "reflection road rocks running sand sign sky snow soccer sports statue street sun sunset surf swimmers tattoo "
    "temple tiger tower town toy train tree valley vehicle water waterfall wedding whales window zebra".split()
)


def read_class_names(path):
    """One class name per line."""
    names = tuple(line.strip() for line in source.read_lines(path, "class list (--classes)"))
    if len(set(names)) != len(names):
        raise DataError(f"{path} lists a class name twice")
    return names


def read_split(formatted_dir, image_root, phase):
    """The SourceSplit of formatted_<phase>_{images,labels}.npy."""
    images = source.read_npy(os.path.join(formatted_dir, f"formatted_{phase}_images.npy"),
                             f"formatted_{phase}_images.npy (--formatted_dir)")
    matrix = source.read_npy(os.path.join(formatted_dir, f"formatted_{phase}_labels.npy"),
                             f"formatted_{phase}_labels.npy (--formatted_dir)")
    if images.ndim != 1 or images.dtype.kind not in "US":
        raise DataError(f"formatted_{phase}_images.npy must be a 1-D array of paths, got {images.dtype} {images.shape}")
    if matrix.ndim != 2 or len(matrix) != len(images):
        raise DataError(f"formatted_{phase}_labels.npy has shape {matrix.shape}, expected "
                        f"({len(images)}, classes) to match formatted_{phase}_images.npy")
    labels_lib.check_label_matrix(matrix, f"formatted_{phase}_labels.npy", allowed=(0, 1))
    ids = tuple(str(image.decode() if isinstance(image, bytes) else image) for image in images)
    return source.SourceSplit(paths=tuple(source.join(image_root, i) for i in ids), ids=ids,
                              labels=matrix.astype(np.float32))


def read(formatted_dir, image_root, name, class_names=None):
    """The Source of a formatted dataset; class names default to class_000, class_001, ..."""
    train = read_split(formatted_dir, image_root, "train")
    test = read_split(formatted_dir, image_root, "val")
    num_classes = train.labels.shape[1]
    if test.labels.shape[1] != num_classes:
        raise DataError(f"formatted train labels have {num_classes} classes, formatted val labels "
                        f"{test.labels.shape[1]}")
    if class_names is None:
        class_names = tuple(f"class_{c:03d}" for c in range(num_classes))
    if len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names for label matrices with {num_classes} columns")
    return source.Source(name=name, class_names=tuple(class_names), train=train, test=test)


def read_nuswide(raw_dir, image_root=None, class_names=None):
    """NUS-WIDE as Cole et al. distribute it: the formatted files in raw_dir, images under raw_dir/Flickr."""
    return read(raw_dir, image_root or os.path.join(raw_dir, "Flickr"), "nuswide",
                class_names or NUSWIDE_CLASS_NAMES)
