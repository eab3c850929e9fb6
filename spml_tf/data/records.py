"""The TFRecord schema (one place for writer and reader) and the per-split manifest.

One `tf.train.Example` per image:
  image/encoded   bytes   the original encoded file (JPEG/PNG), never re-encoded
  image/id        bytes   the source file name or id
  label/full      float C true labels in {0, 1} (all zeros if unknown, see manifest)
  label/observed  float C observed labels: 1 the single annotated positive, 0
                          unannotated, -1 an observed negative (only when the
                          dataset was made with observed negatives)
  example/index   int64   0..N-1 within the split: the row of the label bank

Per split, `<split>/manifest.json` lists the shards with their example counts,
sizes and SHA-256. Shards are written under a temporary name and renamed when
complete; the manifest is written last, so a split with a manifest is whole.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from spml_tf.core.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def feature_spec(num_classes):
    """The parsing spec of one Example; the writer below produces exactly these features."""
    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/id": tf.io.FixedLenFeature([], tf.string),
        "label/full": tf.io.FixedLenFeature([num_classes], tf.float32),
        "label/observed": tf.io.FixedLenFeature([num_classes], tf.float32),
        "example/index": tf.io.FixedLenFeature([], tf.int64),
    }


def serialize_example(encoded, image_id, full, observed, index):
    """One serialized Example with the schema above."""
    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).tolist()))

    def bytes_(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        "image/encoded": bytes_(encoded),
        "image/id": bytes_(image_id.encode("utf-8") if isinstance(image_id, str) else image_id),
        "label/full": floats(full),
        "label/observed": floats(observed),
        "example/index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)])),
    }
    # deterministic: map entries in key order. Otherwise the order depends on
    # the process's hash seed, and the same example written by two converter
    # processes would differ byte for byte (found by a test).
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def parse_examples(serialized, num_classes):
    """Parses a batch (or a single) serialized Example into a dict of tensors."""
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, feature_spec(num_classes))
    return tf.io.parse_example(serialized, feature_spec(num_classes))


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str
    num_examples: int
    num_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a split directory holds; `directory` is where it was read from (not stored)."""

    dataset: str
    split: str
    num_examples: int
    num_classes: int
    class_names: tuple
    shards: tuple
    full_labels_known: bool = True
    # What the converter left out, as {"image": ..., "reason": ...} (--skip_bad_images).
    dropped: tuple = ()
    # Of the converter's inputs (ids, labels, options): a re-run with the same ones finds the split done.
    fingerprint: str = ""
    # The side images were resized to at conversion (--resize_to); 0: the source files' own bytes.
    resized_to: int = 0
    schema_version: int = SCHEMA_VERSION
    directory: str = ""

    @property
    def shard_paths(self):
        return [os.path.join(self.directory, shard.file) for shard in self.shards]

    def to_json(self):
        fields = dataclasses.asdict(self)
        del fields["directory"]
        fields["class_names"] = list(self.class_names)
        fields["shards"] = [dataclasses.asdict(shard) for shard in self.shards]
        fields["dropped"] = list(self.dropped)
        return json.dumps(fields, indent=2)

    def write(self):
        """Writes <directory>/manifest.json atomically: last, so a split with a manifest is whole."""
        from spml_tf.core import files

        files.write_text(os.path.join(self.directory, MANIFEST), self.to_json())


def sha256(path):
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_manifest(directory, convert_hint=""):
    """The Manifest in `directory`, as written (its shards are not looked at); DataError if there is none."""
    path = os.path.join(directory, MANIFEST)
    hint = f" {convert_hint}" if convert_hint else ""
    if not tf.io.gfile.exists(path):
        raise DataError(f"no {MANIFEST} in {directory}: the split was never converted or its conversion did not finish.{hint}")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            fields = json.load(f)
        if fields.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{path} has schema version {fields.get('schema_version')}, this code reads {SCHEMA_VERSION}.{hint}")
        shards = tuple(Shard(**shard) for shard in fields.pop("shards"))
        manifest = Manifest(**{**fields, "class_names": tuple(fields["class_names"]), "shards": shards,
                               "dropped": tuple(fields.get("dropped", ())), "directory": directory})
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(f"{path} is not a valid manifest ({error}).{hint}") from None
    return manifest


def shard_name(split, index, count):
    """The file of shard `index` of `count` in a split (what the converter writes and the manifest lists)."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def is_plain_name(name):
    """A file name that stays in its directory: no separator, not '.' or '..'."""
    return isinstance(name, str) and os.path.basename(name) == name and name not in ("", ".", "..")


def read_manifest(directory, convert_hint=""):
    """Reads and checks a split's manifest against its shards; DataError naming the fix if they differ."""
    manifest = parse_manifest(directory, convert_hint)
    path, shards = os.path.join(directory, MANIFEST), manifest.shards
    hint = f" {convert_hint}" if convert_hint else ""
    if sum(shard.num_examples for shard in shards) != manifest.num_examples:
        raise DataError(f"{path}: shard example counts do not add up to num_examples={manifest.num_examples}.{hint}")
    if len(manifest.class_names) != manifest.num_classes:
        raise DataError(f"{path}: {len(manifest.class_names)} class names for num_classes={manifest.num_classes}.{hint}")
    for shard in shards:
        if not is_plain_name(shard.file):
            raise DataError(f"{path}: shard name {shard.file!r} must be a plain file name inside the split directory")
    expected = [shard_name(manifest.split, k, len(shards)) for k in range(len(shards))]
    if [shard.file for shard in shards] != expected:
        # The converter names shard k of n `<split>-k-of-n`: a manifest whose list lost a shard (and lowered
        # num_examples to match) is caught here, not trained on in silence.
        listed = ", ".join(repr(shard.file) for shard in shards[:3]) + (", ..." if len(shards) > 3 else "")
        raise DataError(f"{path} lists the shards {listed}, not the converter's {len(shards)} shards "
                        f"{expected[0] if expected else '(none)'} .. {expected[-1] if expected else ''}: "
                        f"a shard is missing from it or it was edited.{hint}")
    for shard in shards:
        shard_path = os.path.join(directory, shard.file)
        if not tf.io.gfile.exists(shard_path):
            raise DataError(f"{shard_path} is listed in {path} but missing.{hint}")
        if tf.io.gfile.stat(shard_path).length != shard.num_bytes:
            raise DataError(f"{shard_path} has {tf.io.gfile.stat(shard_path).length} bytes, its manifest says {shard.num_bytes}.{hint}")
    return manifest
