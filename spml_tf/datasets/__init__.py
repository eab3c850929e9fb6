"""Where each dataset's TFRecord splits live, and how a run finds them."""

import dataclasses
import os

import tensorflow as tf

from spml_tf import records
from spml_tf.errors import UsageError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Splits:
    train: records.Manifest
    val: records.Manifest
    test: records.Manifest

    @property
    def class_names(self):
        return self.train.class_names


def default_data_dir(dataset, observed_negatives=0):
    """$SPML_TF_DATA/<dataset>, else ~/.cache/spml_tf/<dataset> (suffixed -neg<N> with observed negatives)."""
    root = os.environ.get("SPML_TF_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "spml_tf")
    return os.path.join(root, dataset + (f"-neg{observed_negatives}" if observed_negatives else ""))


def load(dataset, data_dir, observed_negatives=0):
    """The manifests of a dataset's three splits, building the embedded `digits` on first use."""
    data_dir = data_dir or default_data_dir(dataset, observed_negatives)
    if dataset == "digits":
        from spml_tf.datasets import digits  # only the embedded dataset needs scikit-learn

        digits.ensure(data_dir, observed_negatives)
        hint = "Delete the directory to rebuild it."
    else:
        if observed_negatives:
            raise UsageError(f"--observed_negatives applies when {dataset} is converted, not when it is trained on")
        if not tf.io.gfile.isdir(data_dir):
            raise UsageError(
                f"--data_dir={data_dir!r} does not exist. Convert {dataset} to TFRecords first "
                f"(the converter for {dataset} is not part of this release yet) and pass its output directory."
            )
        hint = f"Convert {dataset} again into {data_dir}."
    manifests = {split: records.read_manifest(os.path.join(data_dir, split), hint) for split in SPLITS}
    names = {split: manifest.class_names for split, manifest in manifests.items()}
    if len(set(names.values())) != 1:
        raise UsageError(f"the splits in {data_dir} disagree on the class names: {names}")
    return Splits(**manifests)
