"""MS-COCO 2014 as released, read as Cole et al.'s format_coco.py does.

Labels come from `annotations/instances_{train,val}2014.json`: an image is in a
split only if it has at least one annotation; class c is the c-th entry of the
json's category list (category ids are not contiguous); images are ordered by
id compared AS STRINGS ("100" before "9"), as the original sorts them.
Official train becomes our train/val, official val our test.
"""

import json
import os

import numpy as np
import tensorflow as tf

from spml_tf.data.datasets import source
from spml_tf.core.errors import DataError

EXPECTED = {"train": 82081, "test": 40137}


def read_instances(raw_dir, split):
    """(class names, {category id: class index}, sorted image ids, N x C labels, problems) of train or val 2014."""
    path = source.require_file(os.path.join(raw_dir, "annotations", f"instances_{split}2014.json"),
                               f"COCO annotations for {split}2014 (annotations_trainval2014.zip)")
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON ({error}); extract it again") from None
    try:
        categories = [(int(category["id"]), str(category["name"])) for category in data["categories"]]
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path} lacks the COCO instances fields ({error!r})") from None
    class_of = {category_id: index for index, (category_id, _) in enumerate(categories)}
    image_ids = sorted({str(image_id) for image_id, _ in annotations})  # as strings, as the original
    row_of = {int(image_id): row for row, image_id in enumerate(image_ids)}
    labels = np.zeros((len(image_ids), len(categories)), np.float32)
    problems = []
    for image_id, category_id in annotations:
        if category_id not in class_of:
            problems.append((row_of[image_id], image_id, f"annotation with category id {category_id}, "
                             f"which is not in the categories of {os.path.basename(path)}"))
            continue
        labels[row_of[image_id], class_of[category_id]] = 1.0
    return tuple(name for _, name in categories), class_of, [int(i) for i in image_ids], labels, problems


def image_file(split, image_id):
    return f"{split}2014/COCO_{split}2014_{image_id:012d}.jpg"


def read(raw_dir):
    """The Source of COCO 2014: official train (to split) and official val as test."""
    splits, problems, class_names = {}, [], None
    for split, official in (("train", "train"), ("test", "val")):
        names, class_of, image_ids, labels, bad = read_instances(raw_dir, official)
        if class_names is None:
            class_names, train_class_of = names, class_of
        elif (names, class_of) != (class_names, train_class_of):
            raise DataError("instances_train2014.json and instances_val2014.json list different categories")
        files = [image_file(official, image_id) for image_id in image_ids]
        splits[split] = source.SourceSplit(
            paths=tuple(os.path.join(raw_dir, file) for file in files), ids=tuple(files), labels=labels)
        problems += [source.Problem(split, row, files[row], reason) for row, _, reason in bad]
    return source.Source(name="coco", class_names=class_names, train=splits["train"], test=splits["test"],
                         problems=tuple(problems))
