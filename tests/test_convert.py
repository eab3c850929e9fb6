"""The converter: each release layout -> shards whose labels, order, observation and split follow docs/method.md.

Expected values are stated here independently: the ground truth comes from how
tests/raw_fixtures.py made the files, and the observation process and the
split are restated below from docs/method.md section 4.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import local_http
import raw_fixtures
import torch_files
import torch_parity
from spml_tf.data import convert
from spml_tf.core import download
from spml_tf.data import datasets, pipeline, records, shard_writer
from spml_tf.core.errors import DataError, UsageError


def quiet(message):
    del message


def run(tmp_path, log=quiet, **settings):
    settings.setdefault("out_dir", str(tmp_path / "out"))
    settings.setdefault("shard_size_mb", 0.002)  # a few images per shard: several shards even here
    return convert.convert(convert.ConvertConfig(**settings), log=log)


# --- docs/method.md section 4, restated -------------------------------------------------------------------


def spec_observation(full, num_negatives=0):
    """One RandomState(1200) consumed row by row: shuffle the positives, keep the first; shuffle the negatives."""
    rng = np.random.RandomState(1200)
    observed = np.zeros_like(full, dtype=np.float32)
    for i in range(len(full)):
        positives = list(np.where(full[i] == 1)[0])
        rng.shuffle(positives)
        if positives:
            observed[i, positives[0]] = 1
        negatives = list(np.where(full[i] == 0)[0])
        rng.shuffle(negatives)
        observed[i, negatives[:num_negatives]] = -1
    return observed


def spec_split(n):
    """Sorted indices: the first 80% of RandomState(1200).permutation(n) is train, the rest val."""
    permutation = np.random.RandomState(1200).permutation(n)
    num_val = int(round(0.2 * n))
    return sorted(permutation[: n - num_val]), sorted(permutation[n - num_val :])


def read_back(manifest):
    """(ids, full, observed, encoded images) of a split, in example-index order."""
    split = pipeline.read_labels(manifest)
    encoded = {}
    for serialized in tf.data.TFRecordDataset(manifest.shard_paths):
        example = records.parse_examples(serialized, manifest.num_classes)
        encoded[int(example["example/index"])] = example["image/encoded"].numpy()
    ids = [image_id.decode() for image_id in split.image_ids]
    return ids, split.full, split.observed, [encoded[i] for i in range(len(ids))]


def assert_official(manifests, truth, image_root, num_negatives=0):
    """Train/val/test as docs/method.md says: observation of the whole official train set, then the 80/20 split."""
    train_files, train_full = truth["train"]
    observed = spec_observation(train_full, num_negatives)
    train_rows, val_rows = spec_split(len(train_files))
    for split, rows in (("train", train_rows), ("val", val_rows)):
        ids, full, obs, encoded = read_back(manifests[split])
        assert ids == [train_files[r] for r in rows]
        np.testing.assert_array_equal(full, train_full[rows])
        np.testing.assert_array_equal(obs, observed[rows])
        assert len(set(encoded)) == len(encoded)  # distinct images, so a mix-up would show
        for image_id, data in zip(ids, encoded):  # the source bytes, never re-encoded
            assert data == open(os.path.join(image_root, image_id), "rb").read()
    test_files, test_full = truth["test"]
    ids, full, obs, _ = read_back(manifests["test"])
    assert ids == test_files
    np.testing.assert_array_equal(full, test_full)
    np.testing.assert_array_equal(obs, test_full)


# --- The four datasets and the formatted files --------------------------------------------------


def test_voc(tmp_path):
    truth = raw_fixtures.make_voc(str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert manifests["train"].class_names == raw_fixtures.VOC_CLASSES
    assert all(len(m.shards) > 1 for m in manifests.values())
    assert_official(manifests, truth, str(tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages"))


def test_voc_with_observed_negatives(tmp_path):
    truth = raw_fixtures.make_voc(str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), observed_negatives=2)
    assert_official(manifests, truth, str(tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages"), 2)


def test_coco(tmp_path):
    names, truth = raw_fixtures.make_coco(str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="coco", raw_dir=str(tmp_path / "raw"))
    assert manifests["train"].class_names == names  # the json's order, not sorted by id
    assert_official(manifests, truth, str(tmp_path / "raw"))


def test_coco_unknown_category_is_reported(tmp_path):
    raw_fixtures.make_coco(str(tmp_path / "raw"))
    path = tmp_path / "raw" / "annotations" / "instances_train2014.json"
    path.write_text(path.read_text().replace('"category_id": 13', '"category_id": 14', 1))
    with pytest.raises(DataError, match="category id 14"):
        run(tmp_path, dataset="coco", raw_dir=str(tmp_path / "raw"))


def test_cub(tmp_path):
    names, truth = raw_fixtures.make_cub(str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="cub", raw_dir=str(tmp_path / "raw"))
    assert manifests["train"].class_names == names
    assert_official(manifests, truth, str(tmp_path / "raw" / "CUB_200_2011" / "images"))


def test_formatted(tmp_path):
    truth = raw_fixtures.make_formatted(str(tmp_path / "formatted"), str(tmp_path / "images"))
    manifests = run(tmp_path, dataset="formatted", formatted_dir=str(tmp_path / "formatted"),
                    image_root=str(tmp_path / "images"), name="mine")
    assert manifests["train"].dataset == "mine"
    assert manifests["train"].class_names == tuple(f"class_{c:03d}" for c in range(6))
    assert_official(manifests, truth, str(tmp_path / "images"))


def test_nuswide_reads_the_formatted_files_over_flickr(tmp_path):
    raw = tmp_path / "raw"
    truth = raw_fixtures.make_formatted(str(raw), str(raw / "Flickr"), num_classes=81)
    manifests = run(tmp_path, dataset="nuswide", raw_dir=str(raw))
    assert manifests["train"].class_names[:3] == ("airport", "animal", "beach")
    assert_official(manifests, truth, str(raw / "Flickr"))


def test_formatted_refuses_pickled_files(tmp_path):
    raw_fixtures.make_formatted(str(tmp_path / "f"), str(tmp_path / "images"))
    np.save(tmp_path / "f" / "formatted_train_images.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="not a plain .npy"):
        run(tmp_path, dataset="formatted", formatted_dir=str(tmp_path / "f"), image_root=str(tmp_path / "images"),
            name="x")


def test_class_names_from_a_file(tmp_path):
    raw_fixtures.make_formatted(str(tmp_path / "f"), str(tmp_path / "images"), num_classes=3)
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    manifests = run(tmp_path, dataset="formatted", formatted_dir=str(tmp_path / "f"),
                    image_root=str(tmp_path / "images"), name="x", classes=str(tmp_path / "classes.txt"))
    assert manifests["test"].class_names == ("red", "green", "blue")


# --- Bad input: collected, reported, or dropped with a record -----------------------------------


def _damage_voc(tmp_path):
    """A VOC copy with a missing image, a truncated JPEG and a file that is no image."""
    truth = raw_fixtures.make_voc(str(tmp_path / "raw"))
    images = tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages"
    train_files, test_files = truth["train"][0], truth["test"][0]
    os.remove(images / train_files[1])
    data = (images / train_files[4]).read_bytes()
    (images / train_files[4]).write_bytes(data[: len(data) // 2])
    (images / test_files[0]).write_bytes(b"<html>not found</html>")
    return truth, {train_files[1]: "file not found", train_files[4]: "does not decode",
                   test_files[0]: "not a JPEG or PNG"}


def test_bad_images_are_all_reported_and_nothing_is_written(tmp_path):
    _, bad = _damage_voc(tmp_path)
    with pytest.raises(DataError) as error:
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    message = str(error.value)
    assert "3 bad input(s)" in message and "--skip_bad_images" in message
    for image, reason in bad.items():
        assert f"{image}: {reason}" in message
    report = (tmp_path / "out" / shard_writer.REPORT).read_text()
    assert all(image in report for image in bad)
    assert not any((tmp_path / "out" / split / records.MANIFEST).exists() for split in ("train", "val", "test"))


def test_skip_bad_images_drops_them_and_keeps_every_other_label(tmp_path):
    truth, bad = _damage_voc(tmp_path)
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), skip_bad_images=True)
    dropped = {entry["image"]: entry["reason"] for m in manifests.values() for entry in m.dropped}
    assert set(dropped) == set(bad)
    assert all(reason.startswith(bad[image]) for image, reason in dropped.items())
    # The others keep the observed label and the split they have without the bad images.
    train_files, train_full = truth["train"]
    observed = spec_observation(train_full)
    train_rows, val_rows = spec_split(len(train_files))
    for split, rows in (("train", train_rows), ("val", val_rows)):
        kept = [r for r in rows if train_files[r] not in bad]
        ids, _, obs, _ = read_back(manifests[split])
        assert ids == [train_files[r] for r in kept]
        np.testing.assert_array_equal(obs, observed[kept])
    assert read_back(manifests["test"])[0] == [f for f in truth["test"][0] if f not in bad]
    assert records.read_manifest(str(tmp_path / "out" / "train")).dropped == manifests["train"].dropped


def test_an_image_without_a_positive_label_is_bad_input(tmp_path):
    truth = raw_fixtures.make_formatted(str(tmp_path / "f"), str(tmp_path / "images"))
    labels = truth["train"][1].copy()
    labels[3] = 0
    np.save(tmp_path / "f" / "formatted_train_labels.npy", labels)
    with pytest.raises(DataError, match=f"{truth['train'][0][3]}: no positive label"):
        run(tmp_path, dataset="formatted", formatted_dir=str(tmp_path / "f"), image_root=str(tmp_path / "images"),
            name="x")


def test_malformed_label_files_name_the_line(tmp_path):
    raw_fixtures.make_voc(str(tmp_path / "raw"))
    path = tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "cat_train.txt"
    path.write_text(path.read_text() + "2008_999999 2\n")
    with pytest.raises(DataError, match=r"cat_train.txt:\d+: expected"):
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))


def test_missing_raw_dir_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--raw_dir"):
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="VOCdevkit/VOC2012"):
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "empty"))


# --- Crash safety and resume ---------------------------------------------------------------------


def _shard_digests(out_dir):
    return {name: hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(out_dir) for name in names if name.endswith(".tfrecord")}


def test_a_rerun_after_a_crash_writes_only_the_missing_shards(tmp_path, monkeypatch):
    raw_fixtures.make_voc(str(tmp_path / "raw"))
    clean = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "clean"))
    expected = _shard_digests(tmp_path / "clean")

    real_write, written = shard_writer.write_shard, []

    def crash_after_three(task):
        if len(written) == 3:
            raise KeyboardInterrupt  # the machine goes away mid-conversion
        written.append(task[1])
        return real_write(task)

    monkeypatch.setattr(shard_writer, "write_shard", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert not (tmp_path / "out" / "train" / records.MANIFEST).exists()  # an unfinished split has no manifest
    with pytest.raises(DataError, match="python -m spml_tf.convert --dataset=voc"):
        datasets.load("voc", str(tmp_path / "out"))  # the trainer refuses it and names the command

    first_three, written[:] = list(written), []
    monkeypatch.setattr(shard_writer, "write_shard", lambda task: written.append(task[1]) or real_write(task))
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert not set(written) & set(first_three)  # complete shards are not redone
    assert len(written) + 3 == sum(len(m.shards) for m in clean.values())
    assert _shard_digests(tmp_path / "out") == expected  # and the result is the same as without the crash
    assert {s: m.shards for s, m in manifests.items()} == {s: m.shards for s, m in clean.items()}

    written[:] = []
    run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert written == []  # done is done


def test_changed_inputs_replace_an_earlier_conversion(tmp_path):
    raw_fixtures.make_voc(str(tmp_path / "raw"))
    run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), observed_negatives=1)
    assert (read_back(manifests["train"])[2] == -1).any()
    left = sorted(os.listdir(tmp_path / "out" / "train"))
    assert left == sorted([records.MANIFEST, shard_writer.PLAN] + [shard.file for shard in manifests["train"].shards])


def test_the_trainer_refuses_a_damaged_shard_and_a_rerun_repairs_it(tmp_path):
    raw_fixtures.make_voc(str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    expected = _shard_digests(tmp_path / "out")
    with pytest.raises(UsageError, match="holds 'voc', not 'coco'"):
        datasets.load("coco", str(tmp_path / "out"))
    with open(manifests["val"].shard_paths[0], "ab") as f:
        f.write(b"junk")
    with pytest.raises(DataError, match="python -m spml_tf.convert --dataset=voc"):
        datasets.load("voc", str(tmp_path / "out"))

    shard = manifests["test"].shard_paths[1]  # same size, different bytes: only the SHA-256 can tell
    data = bytearray(open(shard, "rb").read())
    data[-10] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    messages = []
    run(tmp_path, log=messages.append, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert any("val: 1 shard(s) damaged" in m for m in messages)
    assert any("test: 1 shard(s) damaged" in m for m in messages)
    assert _shard_digests(tmp_path / "out") == expected
    datasets.load("voc", str(tmp_path / "out"))


@pytest.mark.slow
def test_several_worker_processes_write_the_same_shards(tmp_path):
    raw_fixtures.make_voc(str(tmp_path / "raw"), num_train=60, num_val=20)
    run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "one"), workers=1)
    run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "two"), workers=2)
    assert _shard_digests(tmp_path / "one") == _shard_digests(tmp_path / "two")


# --- A user's own CSVs ---------------------------------------------------------------------------


def _csv_dataset(tmp_path, num_train=30, with_val=False):
    images = tmp_path / "images"
    classes = ["bird", "cat", "dog", "fish"]
    rng = np.random.RandomState(0)
    rows = {"train": [], "val": [], "test": []}
    for split, count in (("train", num_train), ("val", 8 if with_val else 0), ("test", 10)):
        for i in range(count):
            image = f"{split}/img_{i:03d}.jpg"
            raw_fixtures.write_jpeg(str(images / image), seed={"train": 0, "val": 1000, "test": 2000}[split] + i)
            if split == "train":
                names = [classes[rng.randint(4)]] + (["fish"] if i == 5 else [])  # a second observed positive
            else:
                names = [c for c in classes if rng.rand() < 0.4]
            rows[split].append((image, names))
        if count:
            raw_fixtures.write_csv(str(tmp_path / f"{split}.csv"), rows[split])
    return rows, classes


def test_csv_without_val_holds_out_train_and_knows_no_full_labels(tmp_path):
    rows, classes = _csv_dataset(tmp_path)
    messages = []
    manifests = run(tmp_path, log=messages.append, dataset="csv", train_csv=str(tmp_path / "train.csv"),
                    test_csv=str(tmp_path / "test.csv"), image_root=str(tmp_path / "images"), name="pets")
    assert any("observed" in m and "validation" in m for m in messages)
    assert manifests["train"].class_names == tuple(classes)  # the sorted names used
    assert not manifests["train"].full_labels_known and not manifests["val"].full_labels_known
    assert manifests["test"].full_labels_known
    train_rows, val_rows = spec_split(len(rows["train"]))
    for split, picked in (("train", train_rows), ("val", val_rows)):
        ids, full, observed, _ = read_back(manifests[split])
        assert ids == [rows["train"][r][0] for r in picked]
        assert not full.any()  # unknown, and recorded as such
        expected = np.array([[c in rows["train"][r][1] for c in classes] for r in picked], np.float32)
        np.testing.assert_array_equal(observed, expected)  # as given, a second positive included
    ids, full, _, _ = read_back(manifests["test"])
    np.testing.assert_array_equal(full, [[c in names for c in classes] for _, names in rows["test"]])


def test_csv_with_val_keeps_its_full_labels(tmp_path):
    rows, classes = _csv_dataset(tmp_path, with_val=True)
    manifests = run(tmp_path, dataset="csv", train_csv=str(tmp_path / "train.csv"),
                    val_csv=str(tmp_path / "val.csv"), image_root=str(tmp_path / "images"), name="pets")
    assert set(manifests) == {"train", "val"}  # no test CSV, no test split
    assert manifests["val"].full_labels_known
    ids, full, _, _ = read_back(manifests["val"])
    assert ids == [image for image, _ in rows["val"]]
    np.testing.assert_array_equal(full, [[c in names for c in classes] for _, names in rows["val"]])
    assert len(read_back(manifests["train"])[0]) == len(rows["train"])  # nothing held out


def test_csv_unknown_classes_missing_files_and_empty_rows_are_reported(tmp_path):
    rows, _ = _csv_dataset(tmp_path)
    train = list(rows["train"])
    train[2] = (train[2][0], ["zebra"])
    train[3] = ("train/missing.jpg", ["cat"])
    train[4] = (train[4][0], [])
    train[6] = ("../outside.jpg", ["cat"])
    raw_fixtures.write_csv(str(tmp_path / "train.csv"), train)
    (tmp_path / "classes.txt").write_text("bird\ncat\ndog\nfish\n")
    with pytest.raises(DataError) as error:
        run(tmp_path, dataset="csv", train_csv=str(tmp_path / "train.csv"), image_root=str(tmp_path / "images"),
            name="pets", classes=str(tmp_path / "classes.txt"))
    message = str(error.value)
    assert "4 bad input(s)" in message
    assert "train.csv:4" in message and "'zebra' not in the class list" in message
    assert "train/missing.jpg: file not found" in message
    assert "train.csv:6" in message and "no label" in message
    assert "../outside.jpg" in message and "stay inside" in message


def test_csv_header_is_checked(tmp_path):
    (tmp_path / "train.csv").write_text("file,tags\na.jpg,cat\n")
    with pytest.raises(DataError, match="header 'image,labels'"):
        run(tmp_path, dataset="csv", train_csv=str(tmp_path / "train.csv"), image_root=str(tmp_path), name="x")


@pytest.mark.parametrize("settings, message", [
    (dict(dataset="cub", raw_dir="x", download=True), "data.caltech.edu"),
    (dict(dataset="voc"), "--raw_dir is required"),
    (dict(dataset="csv", train_csv="t.csv", image_root="i"), "--name"),
    (dict(dataset="csv", train_csv="t.csv", image_root="i", name="x", observed_negatives=1), "CSV has none"),
    (dict(dataset="voc", raw_dir="x", mirror="http://m"), "--mirror applies with --download"),
    (dict(dataset="formatted", formatted_dir="f", image_root="i", name="a b"), "letters, digits"),
    (dict(dataset="voc", raw_dir="x", workers=0), "--workers"),
])
def test_bad_settings_are_usage_errors(settings, message):
    with pytest.raises(UsageError, match=message):
        convert.ConvertConfig(**settings)


# --- --download, against a server on 127.0.0.1 ---------------------------------------------------


def test_download_fetches_verifies_extracts_and_converts(tmp_path, monkeypatch):
    truth = raw_fixtures.make_voc(str(tmp_path / "made"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(tmp_path / "made" / "VOCdevkit"), arcname="VOCdevkit")
    body = buffer.getvalue()
    name = "VOCtrainval_11-May-2012.tar"
    with local_http.serve({name: body}) as server:
        server.cut_first, server.cut_after = 1, len(body) // 3  # the first transfer breaks off
        published = download.Archive(f"http://official.invalid/{name}", len(body), hashlib.md5(body).hexdigest())
        monkeypatch.setitem(download.ARCHIVES, "voc", (published,))
        manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), download=True,
                        mirror=server.url("").rstrip("/"))
    assert [r[1] for r in server.requests] == [None, f"bytes={len(body) // 3}-"]  # resumed, not restarted
    assert_official(manifests, truth, str(tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages"))


# --- The command line, as a user runs it ---------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(*args, script=None):
    program = [os.path.join(ROOT, script)] if script else ["-m", "spml_tf.convert"]
    return subprocess.run([sys.executable, *program, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def error_lines(stderr, prefix="convert: error:"):
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("args, expected", [
    (["--dataset=imagenet"], "--dataset"),
    ([], "--dataset is required"),
    (["--dataset=voc"], "--raw_dir is required"),
    (["--dataset=voc", "--raw_dir=/no/such/dir"], "is not a directory"),
    (["--dataset=voc", "--raw_dir=/tmp", "--workers=two"], "workers"),
    (["--dataset=cub", "--raw_dir=/tmp", "--download"], "download CUB_200_2011.tgz from"),
])
def test_command_line_usage_errors_exit_2_with_one_line(args, expected):
    result = command(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]


def test_command_line_bad_images_exit_1_with_the_report(tmp_path):
    _, bad = _damage_voc(tmp_path)
    result = command("--dataset=voc", f"--raw_dir={tmp_path / 'raw'}", f"--out_dir={tmp_path / 'out'}", "--workers=1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for image, reason in bad.items():
        assert f"{image}: {reason}" in result.stderr


def _predicts_a_voc_image(tmp_path):
    """The export under tmp_path/serving labels an image of the raw VOC fixture (top 2 classes)."""
    image = raw_fixtures.voc_image_path(str(tmp_path / "raw"))
    predicted = subprocess.run([sys.executable, "-m", "spml_tf.predict", f"--saved_model={tmp_path / 'serving'}",
                                "--top_k=2", image], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert predicted.returncode == 0 and predicted.stdout.startswith(f"{image}: "), predicted.stderr[-2000:]


@pytest.mark.slow
def test_convert_then_train_on_voc_from_the_command_line(tmp_path):
    raw_fixtures.make_voc(str(tmp_path / "raw"), num_train=60, num_val=20)
    data_dir = tmp_path / "voc"
    result = command("--dataset=voc", f"--raw_dir={tmp_path / 'raw'}", f"--out_dir={data_dir}", "--workers=2",
                     "--shard_size_mb=0.002")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"python train_main.py --dataset=voc --data_dir={data_dir}" in result.stdout
    assert "writing shards" in result.stderr and "images/s" in result.stderr  # the progress line
    # The VOC preset as it is (torchvision's ResNet-50, the original preprocessing, torch's Adam), at a small
    # input, from a torchvision state dict file (the ImageNet download needs a network).
    weights = str(tmp_path / "resnet50.pth")
    torch_files.write_state_dict(weights, torch_parity.resnet50_state(num_classes=1000))
    result = command("--dataset=voc", f"--data_dir={data_dir}", f"--weights={weights}", "--image_size=32",
                     "--epochs=2", "--warmup_epochs=1", f"--model_dir={tmp_path / 'run'}",
                     f"--export_dir={tmp_path / 'serving'}", script="train_main.py")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.load(open(tmp_path / "run" / "results.json"))
    assert results["config"]["backbone"] == "resnet50" and results["config"]["batch_size"] == 8
    assert len(results["class_names"]) == 20 and results["test"]["map"] >= 0
    assert "precision" in results["apl_rounds"][0]  # full training labels are known for VOC
    _predicts_a_voc_image(tmp_path)


@pytest.mark.slow
def test_the_later_methods_train_on_voc_with_their_authors_presets(tmp_path):
    """`--dataset=voc --loss=ll_r` trains with LL's VOC protocol (torch's SGD 5e-3, batch 16, the head at 10x);
    `--loss=gr --head=boostlu` with BoostLU's head in the exported model (ResNet-50 at 32 px, no weights)."""
    raw_fixtures.make_voc(str(tmp_path / "raw"), num_train=60, num_val=20)
    data_dir = tmp_path / "voc"
    assert command("--dataset=voc", f"--raw_dir={tmp_path / 'raw'}", f"--out_dir={data_dir}").returncode == 0
    common = ["--dataset=voc", f"--data_dir={data_dir}", "--weights=none", "--image_size=32", "--epochs=2"]
    result = command(*common, "--loss=ll_r", f"--model_dir={tmp_path / 'll'}", script="train_main.py")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(tmp_path / "ll" / "results.json"))["config"]
    assert (config["optimizer"], config["learning_rate"], config["batch_size"], config["head_lr_mult"],
            config["ll_delta"], config["max_map_drop"]) == ("sgd", 5e-3, 16, 10.0, 0.2, 3.0)

    result = command(*common, "--loss=gr", "--head=boostlu", f"--model_dir={tmp_path / 'gr'}",
                     f"--export_dir={tmp_path / 'serving'}", script="train_main.py")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(tmp_path / "gr" / "results.json"))["config"]
    assert (config["head"], config["batch_size"], config["epochs"]) == ("boostlu", 8, 2)
    _predicts_a_voc_image(tmp_path)


@pytest.mark.slow
def test_convert_then_train_on_a_users_csv(tmp_path):
    _csv_dataset(tmp_path, num_train=40)
    data_dir = tmp_path / "pets"
    result = command("--dataset=csv", f"--train_csv={tmp_path / 'train.csv'}", f"--test_csv={tmp_path / 'test.csv'}",
                     f"--image_root={tmp_path / 'images'}", "--name=pets", f"--out_dir={data_dir}", "--workers=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--dataset=custom" in result.stdout and "held out" in result.stdout
    train = ["--dataset=custom", f"--data_dir={data_dir}", "--backbone=small_cnn", "--weights=none",
             "--image_size=16", "--epochs=2", "--warmup_epochs=1", "--batch_size=8"]
    result = command(*train, "--loss=full", script="train_main.py")
    assert result.returncode == 2 and "need full training labels" in result.stderr
    result = command(*train, f"--model_dir={tmp_path / 'run'}", script="train_main.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--val_set_variant=observed" in result.stdout
    results = json.load(open(tmp_path / "run" / "results.json"))
    assert results["config"]["val_set_variant"] == "observed"
    assert results["apl_rounds"] and "precision" not in results["apl_rounds"][0]  # no guesses from unknown labels
    assert results["test"]["map"] >= 0


def test_resize_to_stores_images_at_the_training_size(tmp_path):
    truth = raw_fixtures.make_voc(str(tmp_path / "raw"))
    manifests = run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), resize_to=6)
    assert all(m.resized_to == 6 for m in manifests.values())
    ids, full, _, encoded = read_back(manifests["test"])
    assert ids == truth["test"][0]  # same images, same labels, ...
    np.testing.assert_array_equal(full, truth["test"][1])
    images = tf.io.decode_jpeg(encoded[0]).numpy()
    assert images.shape == (6, 6, 3)  # ... stored at 6 x 6
    source = tf.io.decode_jpeg(open(tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages" / ids[0], "rb").read())
    expected = tf.image.resize(source, [6, 6]).numpy()
    other = tf.image.resize(tf.io.decode_jpeg(open(tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages" / ids[1],
                                                   "rb").read()), [6, 6]).numpy()
    error = np.abs(images.astype(np.float32) - expected).mean()  # what training would have made of it, up to JPEG
    assert error < 20 and error < np.abs(images.astype(np.float32) - other).mean() / 2
    with pytest.raises(UsageError, match="--resize_to"):
        convert.ConvertConfig(dataset="voc", raw_dir="x", resize_to=-1)


# --- What the converter refuses to read or to overwrite ------------------------------------------


def test_a_csv_row_naming_a_link_out_of_the_image_root_is_bad_input(tmp_path):
    rows, _ = _csv_dataset(tmp_path)
    secret = tmp_path / "secret.jpg"
    raw_fixtures.write_jpeg(str(secret), seed=99)
    os.symlink(secret, tmp_path / "images" / "train" / "link.jpg")  # inside the root, pointing out of it
    train = list(rows["train"])
    train[1] = ("train/link.jpg", ["cat"])
    raw_fixtures.write_csv(str(tmp_path / "train.csv"), train)
    with pytest.raises(DataError) as error:
        run(tmp_path, dataset="csv", train_csv=str(tmp_path / "train.csv"), image_root=str(tmp_path / "images"),
            name="pets")
    assert "train/link.jpg" in str(error.value) and f"a link to {secret}, outside the image root" in str(error.value)
    assert not (tmp_path / "out" / "train").exists()


def test_a_link_that_stays_inside_the_image_root_is_followed(tmp_path):
    rows, _ = _csv_dataset(tmp_path)
    os.symlink(tmp_path / "images" / rows["train"][0][0], tmp_path / "images" / "train" / "alias.jpg")
    train = list(rows["train"])
    train[1] = ("train/alias.jpg", ["cat"])
    raw_fixtures.write_csv(str(tmp_path / "train.csv"), train)
    manifests = run(tmp_path, dataset="csv", train_csv=str(tmp_path / "train.csv"),
                    image_root=str(tmp_path / "images"), name="pets")
    assert manifests["train"].num_examples + manifests["val"].num_examples == len(train)


def test_rows_held_out_of_the_train_csv_are_reported_as_train_rows(tmp_path):
    rows, _ = _csv_dataset(tmp_path)
    train = list(rows["train"])
    _, val_rows = spec_split(len(train))
    held_out = int(val_rows[0])
    train[held_out] = ("train/missing.jpg", ["cat"])
    raw_fixtures.write_csv(str(tmp_path / "train.csv"), train)
    with pytest.raises(DataError) as error:
        run(tmp_path, dataset="csv", train_csv=str(tmp_path / "train.csv"), image_root=str(tmp_path / "images"),
            name="pets")
    assert "val (held out of train): train/missing.jpg: file not found" in str(error.value)


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    truth = raw_fixtures.make_voc(str(tmp_path / "raw"), num_train=8, num_val=4)
    victim = tmp_path / "raw" / "VOCdevkit" / "VOC2012" / "JPEGImages" / truth["train"][0][0]
    victim.write_bytes(raw_fixtures.png_header_only(23000, 23000))  # 23000 x 23000 declared, no pixel data at all
    with pytest.raises(DataError) as error:
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert f"{victim.name}: declares 23000 x 23000 pixels (529 megapixels), above the limit of 100 megapixels" in str(
        error.value)
    # A real image above a lower limit, named the same way.
    victim.write_bytes(tf.io.encode_png(np.zeros((40, 50, 3), np.uint8)).numpy())
    with pytest.raises(DataError, match="declares 50 x 40 pixels"):
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"), max_image_pixels=1999)


def test_a_split_directory_holding_other_files_is_refused_untouched(tmp_path):
    raw_fixtures.make_voc(str(tmp_path / "raw"), num_train=8, num_val=4)
    mine = tmp_path / "out" / "train" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes")
    (tmp_path / "out" / "train" / "mine.tfrecord").write_bytes(b"my records")
    with pytest.raises(UsageError, match="holds files that no conversion wrote"):
        run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert mine.read_text() == "my notes" and (tmp_path / "out" / "train" / "mine.tfrecord").exists()


def test_a_rerun_never_deletes_outside_the_split_directory(tmp_path):
    """A manifest edited to name `../victim.txt` as a shard: the re-run's repair must not remove that file."""
    raw_fixtures.make_voc(str(tmp_path / "raw"), num_train=8, num_val=4)
    run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    victim = tmp_path / "out" / "victim.txt"
    victim.write_text("mine")
    path = tmp_path / "out" / "val" / records.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["file"] = "../victim.txt"
    path.write_text(json.dumps(manifest))
    run(tmp_path, dataset="voc", raw_dir=str(tmp_path / "raw"))
    assert victim.read_text() == "mine"
    datasets.load("voc", str(tmp_path / "out"))  # and the split was repaired
