"""A user's own single-positive data: one CSV per split with columns `image,labels`.

`labels` is a `|`-separated list of class names. Training rows usually carry the
one positive that was annotated (more are kept as observed positives); nothing
else about them is known, so their full labels are unknown. Validation and test
rows carry their full label sets (an empty cell: no class present). Image paths
are relative to the image root.
"""

import codecs
import csv
import io

import numpy as np
import tensorflow as tf

from spml_tf.data.datasets import source
from spml_tf.core.errors import DataError

SEPARATOR = "|"
# Rows x classes of all the CSVs: each split's labels are a dense float32 matrix, of which the converter holds
# several copies. 2**28 (1 GiB a copy) is 20 times NUS-WIDE's; a labels column that is not class names (an id,
# a caption) names about one class per row, and would need rows^2 of memory and time.
MAX_LABELS = 2**28


def read_rows(path):
    """[(line number, image, [class names], fields beyond the header's)] of a CSV with an `image,labels` header.

    The file is UTF-8 (a byte order mark allowed); its lines may end in LF, CRLF or a bare CR.
    """
    source.require_file(path, "CSV file")
    with tf.io.gfile.GFile(path, "rb") as f:
        text = _decode(path, f.read())
    reader = csv.DictReader(io.StringIO(text, newline=None))  # newline=None: every line end reads as "\n"
    rows = []
    try:
        if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{path}: the first line must be the header 'image,labels', got {reader.fieldnames}")
        for row in reader:
            image = (row["image"] or "").strip()
            names = [name.strip() for name in (row["labels"] or "").split(SEPARATOR) if name.strip()]
            rows.append((reader.line_num, image, names, len(row.get(None) or ())))
    except csv.Error as error:  # a field above csv's size limit
        raise DataError(f"{path}:{reader.line_num + 1}: not a readable CSV row ({error})") from None
    return rows


def _decode(path, data):
    """The text of a CSV file's bytes: UTF-8, after a byte order mark if there is one; else a DataError naming
    the first byte that is not UTF-8 text, where it is, and what to do."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text, offset = data[start:].decode("utf-8"), len(data)
    except UnicodeDecodeError as error:
        text, offset = None, start + error.start
    nul = data.find(b"\0", 0, offset)  # valid UTF-8, but in no text file: UTF-16 holds one in every ASCII character
    offset = offset if nul < 0 else nul
    if offset == len(data):
        return text
    line = len((data[:offset] + b"x").splitlines())  # the lines before the byte and the one it is on
    looks = ", it looks like UTF-16" if b"\0" in data[:4] else ""
    raise DataError(f"{path} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}, line {line}){looks}: "
                    "save it as UTF-8")


def _split(split, path, rows, class_index, image_root, require_label):
    """The SourceSplit of one CSV, and its problems (unknown class, no label, bad or repeated path)."""
    ids, paths, problems, seen = [], [], [], {}
    matrix = np.zeros((len(rows), len(class_index)), np.float32)
    for row, (line, image, names, extra) in enumerate(rows):
        where = f"{path}:{line}"
        unknown = [name for name in names if name not in class_index]
        reason = None
        if extra:  # an unquoted comma in a path or a label: the columns after it moved
            reason = f"{extra} more field(s) than the header 'image,labels' (quote a path or label holding a comma)"
        elif not image:
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
        class_names = tuple(sorted({n for split_rows in rows.values() for _, _, names, _ in split_rows for n in names}))
        if not class_names:
            raise DataError(f"{train_csv} names no class at all")
    num_rows = sum(len(split_rows) for split_rows in rows.values())
    if num_rows * len(class_names) > MAX_LABELS:
        files, examples = ", ".join(path for path in csvs.values() if path), ", ".join(map(repr, class_names[:3]))
        raise DataError(f"{files}: {num_rows:,} rows x {len(class_names):,} classes ({examples}, ...) are more labels "
                        f"than the converter holds ({MAX_LABELS:,}): the labels column must hold class names "
                        f"separated by '{SEPARATOR}'")
    class_index = {class_name: c for c, class_name in enumerate(class_names)}
    splits, problems = {}, []
    for split, split_rows in rows.items():
        splits[split], bad = _split(split, csvs[split], split_rows, class_index, image_root,
                                    require_label=split == "train")
        problems += bad
    return source.Source(name=name, class_names=tuple(class_names), train=splits["train"],
                         val=splits.get("val"), test=splits.get("test"), train_labels_are_full=False,
                         problems=tuple(problems))
