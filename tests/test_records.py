"""The TFRecord schema round trip and the manifest checks."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import raw_fixtures
from spml_tf.data import records
from spml_tf.core.errors import DataError

CLASSES = ("cat", "dog", "car")


def _examples(num):
    rng = np.random.RandomState(0)
    for i in range(num):
        image = rng.randint(0, 256, size=(5 + i % 3, 7, 3), dtype=np.uint8)
        full = (rng.rand(3) < 0.5).astype(np.float32)
        full[i % 3] = 1.0
        observed = np.zeros(3, np.float32)
        observed[i % 3] = 1.0
        yield tf.io.encode_png(image).numpy(), f"img_{i}.png", full, observed


def test_written_is_read(tmp_path):
    """Every feature of every example reads back as written, indices 0..N-1 in order."""
    written = list(_examples(7))
    manifest = raw_fixtures.write_split(str(tmp_path), dataset="toy", split="train", class_names=CLASSES,
                                   examples=iter(written), shard_size_mb=0.0005)
    assert manifest.num_examples == 7 and len(manifest.shards) > 1
    read = [records.parse_examples(s, 3) for s in tf.data.TFRecordDataset(manifest.shard_paths)]
    assert len(read) == 7
    for i, ((encoded, image_id, full, observed), example) in enumerate(zip(written, read)):
        assert example["image/encoded"].numpy() == encoded  # the bytes, never re-encoded
        assert example["image/id"].numpy().decode() == image_id
        np.testing.assert_array_equal(example["label/full"].numpy(), full)
        np.testing.assert_array_equal(example["label/observed"].numpy(), observed)
        assert example["example/index"].numpy() == i


def test_manifest_round_trip_and_no_temporary_files(tmp_path):
    manifest = raw_fixtures.write_split(str(tmp_path), dataset="toy", split="val", class_names=CLASSES,
                                   examples=_examples(4), full_labels_known=False)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp") or "-partial" in name]
    again = records.read_manifest(str(tmp_path))
    assert again == manifest
    assert again.class_names == CLASSES and again.full_labels_known is False
    stored = json.load(open(tmp_path / "manifest.json"))
    assert stored["schema_version"] == records.SCHEMA_VERSION
    assert stored["shards"][0]["num_examples"] == 4 and len(stored["shards"][0]["sha256"]) == 64


def test_missing_manifest_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="no manifest.json.*convert it"):
        records.read_manifest(str(tmp_path), "convert it")


def test_truncated_shard_is_refused(tmp_path):
    manifest = raw_fixtures.write_split(str(tmp_path), dataset="toy", split="test", class_names=CLASSES,
                                   examples=_examples(3))
    path = manifest.shard_paths[0]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-10])
    with pytest.raises(DataError, match="bytes, its manifest says"):
        records.read_manifest(str(tmp_path))


def test_missing_shard_and_escaping_name_are_refused(tmp_path):
    manifest = raw_fixtures.write_split(str(tmp_path), dataset="toy", split="test", class_names=CLASSES,
                                   examples=_examples(3))
    os.remove(manifest.shard_paths[0])
    with pytest.raises(DataError, match="missing"):
        records.read_manifest(str(tmp_path))
    stored = json.load(open(tmp_path / "manifest.json"))
    stored["shards"][0]["file"] = "../elsewhere.tfrecord"
    json.dump(stored, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(DataError, match="plain file name"):
        records.read_manifest(str(tmp_path))


def test_a_manifest_that_dropped_a_shard_and_lowered_its_count_is_refused(tmp_path):
    """Issue 21: the last shard left out of the list and num_examples lowered to match would train on fewer
    images in silence; the shards' names number them, k of n."""
    manifest = raw_fixtures.write_split(str(tmp_path), dataset="toy", split="test", class_names=CLASSES,
                                        examples=_examples(40), shard_size_mb=0.0005)
    assert len(manifest.shards) >= 3
    records.read_manifest(str(tmp_path))
    stored = json.load(open(tmp_path / "manifest.json"))
    dropped = stored["shards"].pop()
    stored["num_examples"] -= dropped["num_examples"]
    json.dump(stored, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(DataError, match=rf"lists the shards .*, not the converter's {len(manifest.shards) - 1} "
                                        "shards .*: a shard is missing from it or it was edited"):
        records.read_manifest(str(tmp_path))
