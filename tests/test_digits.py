"""The embedded digits dataset: deterministic, in the real format, observed and split by the rules of docs/method.md."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from spml_tf.data import datasets, labels, pipeline
from spml_tf.data.datasets import digits
from spml_tf.core.errors import DataError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _official_train(splits):
    """Full and observed labels of the official train set, rebuilt from train + val by image id."""
    rows = {}
    for manifest in (splits.train, splits.val):
        split_labels = pipeline.read_labels(manifest)
        for image_id, full, observed in zip(split_labels.image_ids, split_labels.full, split_labels.observed):
            rows[int(image_id.decode().rsplit("_", 1)[1])] = (full, observed, manifest.split)
    order = sorted(rows)
    assert order == list(range(len(order)))
    return (np.array([rows[i][0] for i in order]), np.array([rows[i][1] for i in order]),
            np.array([rows[i][2] for i in order]))


def test_sizes_and_class_counts(tiny_digits_dir):
    splits = datasets.load("digits", tiny_digits_dir)
    assert (splits.train.num_examples, splits.val.num_examples, splits.test.num_examples) == (160, 40, 100)
    assert splits.class_names == tuple("0123456789")
    for manifest in (splits.train, splits.test):
        counts = pipeline.read_labels(manifest).full.sum(axis=1)
        assert counts.min() >= digits.MIN_CLASSES and counts.max() <= digits.MAX_CLASSES


def test_observation_and_split_follow_the_spec(tiny_digits_dir):
    """Observed labels come from the FULL official train matrix (seed 1200), before the 80/20 split."""
    full, observed, split = _official_train(datasets.load("digits", tiny_digits_dir))
    np.testing.assert_array_equal(observed, labels.observe_single_positive(full))
    train_idx, val_idx = labels.train_val_split(len(full))
    np.testing.assert_array_equal(np.flatnonzero(split == "train"), train_idx)
    np.testing.assert_array_equal(np.flatnonzero(split == "val"), val_idx)


def test_test_images_keep_all_labels(tiny_digits_dir):
    test = pipeline.read_labels(datasets.load("digits", tiny_digits_dir).test)
    np.testing.assert_array_equal(test.observed, test.full)


def test_mosaics_are_deterministic_and_show_their_digits():
    (scans, targets), _ = digits._scan_pools()
    first = digits.make_mosaics(20, scans, targets, np.random.RandomState(5))
    second = digits.make_mosaics(20, scans, targets, np.random.RandomState(5))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    images, label_matrix = first
    side = 8 * digits.GRID * digits.SCALE
    assert images.shape == (20, side, side, 3) and images.dtype == np.uint8
    # Each cell is a (scaled) scan of one of the image's classes, and every class shows.
    cell = 8 * digits.SCALE
    for image, row in zip(images, label_matrix):
        shown = set()
        for top in range(0, side, cell):
            for left in range(0, side, cell):
                scan = image[top : top + cell : digits.SCALE, left : left + cell : digits.SCALE, 0]
                matches = [c for c in np.flatnonzero(row) if (scans[targets == c] == scan).all(axis=(1, 2)).any()]
                assert matches, "a cell shows a digit that is not among the image's labels"
                shown.update(matches)
        assert shown == set(np.flatnonzero(row))


def test_train_and_test_scans_are_disjoint():
    (train_scans, _), (test_scans, _) = digits._scan_pools()
    assert len(train_scans) + len(test_scans) == 1797
    train_set = {scan.tobytes() for scan in train_scans}
    shared = sum(scan.tobytes() in train_set for scan in test_scans)
    assert shared <= 5  # the 1,797 scans hold a few exact duplicates; different scans otherwise


def test_observed_negatives_are_kept_in_their_own_cache(tmp_path, monkeypatch):
    """--observed_negatives=N marks N true negatives per training image as -1, in a separate directory."""
    monkeypatch.setenv("SPML_TF_DATA", str(tmp_path))
    monkeypatch.setattr(digits, "NUM_OFFICIAL_TRAIN", 50)
    monkeypatch.setattr(digits, "NUM_TEST", 10)
    splits = datasets.load("digits", "", observed_negatives=2)
    assert splits.train.directory.startswith(str(tmp_path / "digits-neg2"))
    train = pipeline.read_labels(splits.train)
    np.testing.assert_array_equal((train.observed == -1).sum(axis=1), 2)
    assert (train.full[train.observed == -1] == 0).all()
    full, observed, _ = _official_train(splits)
    np.testing.assert_array_equal(observed, labels.observe_single_positive(full, num_negatives=2))


# --- The build writes only into what it owns -----------------------------------------------------

def _tree(directory):
    """{relative path: bytes} of every file under `directory`."""
    return {os.path.relpath(os.path.join(root, name), directory): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(directory) for name in names}


def test_a_users_folder_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpeg")
    before = _tree(tmp_path)
    with pytest.raises(UsageError, match="holds files the digits build did not write"):
        digits.ensure(str(tmp_path))
    assert _tree(tmp_path) == before


def test_a_converted_dataset_is_refused_with_the_dataset_to_use(tiny_digits_dir, tmp_path):
    converted = tmp_path / "pets"
    shutil.copytree(os.path.join(tiny_digits_dir, "train"), converted / "train")
    manifest = converted / "train" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dataset": "digits"', '"dataset": "pets"'))
    before = _tree(converted)
    with pytest.raises(UsageError, match=r"holds a dataset that is not the digits build \('pets'\); did you mean "
                                         r"--dataset=custom\?"):
        datasets.load("digits", str(converted))
    assert _tree(converted) == before


def test_train_main_with_a_users_data_dir_stops_and_deletes_nothing(tmp_path):
    """`--data_dir=.` with the default --dataset=digits, in a folder with the user's files: exit 2, all kept."""
    (tmp_path / "thesis.tex").write_text("years of work")
    before = _tree(tmp_path)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_main.py"), "--data_dir=.",
                             f"--model_dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds files the digits build did not write (thesis.tex)" in result.stderr
    assert _tree(tmp_path) == before and not (tmp_path / "run").exists()


def test_an_outdated_or_half_written_build_of_its_own_is_rebuilt(tiny_digits_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "NUM_OFFICIAL_TRAIN", 50)
    monkeypatch.setattr(digits, "NUM_TEST", 20)
    half = tmp_path / "half"
    half.mkdir()
    (half / digits.MARK).write_text("")
    (half / "train").mkdir()
    (half / "train" / "train-00000.tfrecord.tmp").write_bytes(b"cut short")  # killed mid-build: no VERSION
    digits.ensure(str(half), log=lambda line: None)
    assert datasets.load("digits", str(half)).train.num_examples == 40

    legacy = tmp_path / "legacy"  # a build made before the mark existed, of an older version
    shutil.copytree(tiny_digits_dir, legacy)
    os.remove(legacy / digits.MARK)
    (legacy / digits.VERSION_FILE).write_text("4 observed_negatives=0")
    digits.ensure(str(legacy), log=lambda line: None)
    assert datasets.load("digits", str(legacy)).train.num_examples == 40 and (legacy / digits.MARK).exists()


def test_a_current_build_is_reused_as_it_is(tiny_digits_dir):
    before = _tree(tiny_digits_dir)
    digits.ensure(tiny_digits_dir, log=lambda line: pytest.fail(line))
    assert _tree(tiny_digits_dir) == before


def test_a_build_by_another_process_is_waited_for_then_given_up_on(tmp_path, monkeypatch):
    directory = tmp_path / "digits"
    directory.mkdir()
    (directory / digits.MARK).write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from spml_tf.core import file_lock; "
         "lock = file_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)",
         str(directory / digits.LOCK)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(digits, "BUILD_WAIT_SECONDS", 1)
        said = []
        with pytest.raises(DataError, match=rf"gave up after 1 s waiting for process {holder.pid} to finish building"):
            digits.ensure(str(directory), log=said.append)
        assert said == [f"Waiting for process {holder.pid}, which is building the digits dataset in {directory} ..."]
    finally:
        holder.kill()
        holder.wait()


def test_a_data_dir_that_cannot_be_created_is_one_line(tmp_path):
    """Found under Bazel's sandbox, whose home is read-only: a bare OSError traceback before."""
    from spml_tf.data.datasets import digits
    from spml_tf.core.errors import UsageError

    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError, match=r"cannot build the digits dataset in .*afile/digits \(Not a directory\): "
                                         "pass --data_dir="):
        digits.ensure(str(tmp_path / "afile" / "digits"))
