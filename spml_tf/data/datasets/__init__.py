"""Where each dataset's TFRecord splits live, and how a run finds them."""

import dataclasses
import os

import tensorflow as tf

from spml_tf.data import records
from spml_tf.core.errors import UsageError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Splits:
    train: records.Manifest
    val: records.Manifest
    test: records.Manifest = None  # a user's own data may come without a test set
    repair_hint: str = ""  # what to do about a damaged shard: rebuild (digits) or convert again

    def labels(self, split):
        """pipeline.SplitLabels of `split` ("train", "val", "test")."""
        from spml_tf.data import pipeline

        return pipeline.read_labels(getattr(self, split), self.repair_hint)

    @property
    def class_names(self):
        return self.train.class_names


def default_data_dir(dataset, observed_negatives=0):
    """$SPML_TF_DATA/<dataset>, else ~/.cache/spml_tf/<dataset> (suffixed -neg<N> with observed negatives)."""
    root = os.environ.get("SPML_TF_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "spml_tf")
    return os.path.join(root, dataset + (f"-neg{observed_negatives}" if observed_negatives else ""))


def convert_command(dataset, data_dir):
    """The command that (re)makes `data_dir`, for error messages."""
    if dataset == "custom":
        return (f"python -m spml_tf.convert --dataset=csv --train_csv=... --image_root=... --name=... "
                f"--out_dir={data_dir}")
    source = "--formatted_dir=... --image_root=..." if dataset == "nuswide" else "--raw_dir=<the extracted release>"
    download = " (or --download)" if dataset in ("voc", "coco") else ""
    return f"python -m spml_tf.convert --dataset={dataset} {source}{download} --out_dir={data_dir}"


def load(dataset, data_dir, observed_negatives=0):
    """The manifests of a dataset's splits, building the embedded `digits` on first use."""
    if dataset == "custom" and not data_dir:
        raise UsageError("--dataset=custom needs --data_dir: the --out_dir of your conversion")
    data_dir = data_dir or default_data_dir(dataset, observed_negatives)
    if dataset == "digits":
        from spml_tf.data.datasets import digits  # only the embedded dataset needs scikit-learn

        digits.ensure(data_dir, observed_negatives)
        hint = f"Delete {data_dir}: the next run rebuilds it."
    else:
        if observed_negatives:
            raise UsageError(f"--observed_negatives applies when {dataset} is converted, not when it is trained on")
        command = convert_command(dataset, data_dir)
        if not tf.io.gfile.isdir(data_dir):
            raise UsageError(f"--data_dir={data_dir!r} does not exist. Convert {dataset} to TFRecords first: {command}")
        hint = (f"Run the conversion again (it finishes an interrupted conversion, and rewrites damaged or "
                f"missing shards): {command}")
    optional = ("test",) if dataset == "custom" else ()
    manifests = {}
    for split in SPLITS:
        directory = os.path.join(data_dir, split)
        if split in optional and not tf.io.gfile.exists(directory):
            continue
        manifests[split] = records.read_manifest(directory, hint)
    names = {split: manifest.class_names for split, manifest in manifests.items()}
    if len(set(names.values())) != 1:
        raise UsageError(f"the splits in {data_dir} disagree on the class names: {names}")
    stored = manifests["train"].dataset
    if dataset not in ("custom", stored):
        raise UsageError(f"{data_dir} holds {stored!r}, not {dataset!r}: pass --dataset="
                         f"{stored if stored in ('voc', 'coco', 'nuswide', 'cub', 'digits') else 'custom'}")
    return Splits(**manifests, repair_hint=hint)
