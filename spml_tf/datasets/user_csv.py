"""A user's own single-positive data: one CSV per split with columns `image,labels`.

`labels` is a `|`-separated list of class names. Training rows usually carry the
one positive that was annotated (more are kept as observed positives); nothing
else about them is known, so their full labels are unknown. Validation and test
rows carry their full label sets (an empty cell: no class present). Image paths
are relative to the image root.
"""

import csv
import io

import numpy as np
import tensorflow as tf

from spml_tf.datasets import source
from spml_tf.errors import DataError

SEPARATOR = "|"


def read_rows(path):
    """[(line number, image, [class names])] of a CSV with an `image,labels` header."""
    source.require_file(path, "CSV file")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
        raise DataError(f"{path}: the first line must be the header 'image,labels', got {reader.fieldnames}")
    rows = []
    for row in reader:
        image = (row["image"] or "").strip()
        names = [name.strip() for name in (row["labels"] or "").split(SEPARATOR) if name.strip()]
        rows.append((reader.line_num, image, names))
    return rows


def _split(split, path, rows, class_index, image_root, require_label):
    """The SourceSplit of one CSV, and its problems (unknown class, no label, bad or repeated path)."""
    ids, paths, problems, seen = [], [], [], {}
    matrix = np.zeros((len(rows), len(class_index)), np.float32)
    for row, (line, image, names) in enumerate(rows):
        where = f"{path}:{line}"
        unknown = [name for name in names if name not in class_index]
        reason = None
        if not image:
            reason = "no image path"
        elif unknown:
            reason = f"class name(s) {', '.join(map(repr, unknown))} not in the class list"
        elif require_label and not names:
            reason = "no label: a training image needs its one positive class"
        elif image in seen:
            reason = f"listed twice (also on line {seen[image]})"
        try:
            paths.append(source.join(image_root, image) if image else "")
        except DataError as error:
            paths.append("")
            reason = reason or str(error)
        seen.setdefault(image, line)
        ids.append(image)
        if reason:
            problems.append(source.Problem(split, row, image or "?", f"{reason} ({where})"))
        else:
            matrix[row, [class_index[name] for name in names]] = 1.0
    return source.SourceSplit(paths=tuple(paths), ids=tuple(ids), labels=matrix), problems


def read(train_csv, image_root, name, val_csv=None, test_csv=None, class_names=None):
    """The Source of a user's CSVs; classes default to the sorted union of the names they use."""
    csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
    rows = {split: read_rows(path) for split, path in csvs.items() if path}
    if class_names is None:
        class_names = tuple(sorted({n for split_rows in rows.values() for _, _, names in split_rows for n in names}))
        if not class_names:
            raise DataError(f"{train_csv} names no class at all")
    class_index = {class_name: c for c, class_name in enumerate(class_names)}
    splits, problems = {}, []
    for split, split_rows in rows.items():
        splits[split], bad = _split(split, csvs[split], split_rows, class_index, image_root,
                                    require_label=split == "train")
        problems += bad
    return source.Source(name=name, class_names=tuple(class_names), train=splits["train"],
                         val=splits.get("val"), test=splits.get("test"), train_labels_are_full=False,
                         problems=tuple(problems))
