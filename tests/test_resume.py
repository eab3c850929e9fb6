"""Nothing lost: a killed run resumes to the results of an uninterrupted one; bad state and bad data are refused."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import raw_fixtures
from spml_tf import config as config_lib
from spml_tf.training import trainer as train
from spml_tf.data import pipeline, records
from spml_tf.training import checkpoint, run_dir
from spml_tf.core.errors import DataError, TrainingError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, model_dir, **overrides):
    settings = dict(data_dir=data_dir, model_dir=str(model_dir), epochs=3, warmup_epochs=1, patience=10,
                    image_size=16, batch_size=32)
    return config_lib.from_overrides("digits", **{**settings, **overrides})


def quiet(message):
    del message


def train_main(*args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_main.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(model_dir):
    """What a finished run leaves: its results (bar the paths) and its final label bank."""
    results = json.load(open(os.path.join(model_dir, run_dir.RESULTS)))
    del results["config"]["model_dir"]
    return results, np.load(os.path.join(model_dir, run_dir.LABEL_BANK))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_results_of_an_uninterrupted_one(tiny_digits_dir, tmp_path):
    args = [f"--data_dir={tiny_digits_dir}", "--epochs=6", "--warmup_epochs=1", "--patience=10", "--image_size=16",
            "--batch_size=16", "--deterministic"]
    whole = train_main(*args, f"--model_dir={tmp_path / 'whole'}")
    assert whole.wait(600) == 0, whole.stderr.read()[-3000:]

    killed_dir = tmp_path / "killed"
    run = train_main(*args, f"--model_dir={killed_dir}")
    pointer = killed_dir / checkpoint.DIRECTORY / checkpoint.LATEST
    deadline = time.monotonic() + 600
    while not pointer.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)  # after the first epoch and its APL round, mid-way through the second
    run.wait(60)
    assert run.returncode == -signal.SIGKILL
    epochs_done = checkpoint.latest(str(killed_dir)).epoch
    assert 1 <= epochs_done < 6 and not (killed_dir / run_dir.RESULTS).exists()
    assert checkpoint.latest(str(killed_dir)).state["callbacks"]["apl"]["rounds"]  # the pseudo-labels are in it

    again = train_main(*args, f"--model_dir={killed_dir}")
    assert again.wait(600) == 0, again.stderr.read()[-3000:]
    assert f"Resuming {killed_dir} after epoch {epochs_done}" in again.stdout.read()
    (results, bank), (expected, expected_bank) = outcome(killed_dir), outcome(tmp_path / "whole")
    assert results == expected  # history, APL rounds and precision, best epoch, val and test metrics
    np.testing.assert_array_equal(bank, expected_bank)
    assert len(results["apl_rounds"]) == 5


def test_a_finished_run_started_again_trains_no_more(tiny_digits_dir, tmp_path):
    first = train.train_and_evaluate(tiny_config(tiny_digits_dir, tmp_path), log=quiet, verbose=0)
    messages = []
    second = train.train_and_evaluate(tiny_config(tiny_digits_dir, tmp_path), log=messages.append, verbose=0)
    assert any(f"Resuming {tmp_path} after epoch 3" in m for m in messages)
    assert second["history"] == first["history"] and second["test"] == first["test"]


def test_a_checkpoint_of_another_run_is_refused(tiny_digits_dir, tmp_path):
    train.train_and_evaluate(tiny_config(tiny_digits_dir, tmp_path, epochs=2), log=quiet, verbose=0)
    with pytest.raises(UsageError, match=r"different run \(--loss='em_apl' there, 'an' now\)"):
        train.train_and_evaluate(tiny_config(tiny_digits_dir, tmp_path, epochs=2, loss="an"), log=quiet, verbose=0)
    with pytest.raises(UsageError, match="--epochs=2 there, 3 now"):
        train.train_and_evaluate(tiny_config(tiny_digits_dir, tmp_path), log=quiet, verbose=0)


# What Checkpointing writes besides the epoch, in its smallest form.
STATE = {"stop_training": False, "identity": {"config": {}, "class_names": []}, "callbacks": {}}


class _Model:
    """What checkpoint.write needs of a model: weights that save."""

    def save_weights(self, path):
        open(path, "w").write("weights")


class _Bank:
    def __init__(self, value):
        self.value = value

    def numpy(self):
        return np.full((3, 2), self.value, np.float32)


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one(tmp_path, monkeypatch):
    checkpoint.write(str(tmp_path), 1, _Model(), _Bank(0.0), STATE, {})
    root = tmp_path / checkpoint.DIRECTORY
    # Killed after the checkpoint of epoch 2 was written whole, before LATEST was moved:
    shutil.copytree(root / "epoch-0001", root / "epoch-0002")
    # ... and another one killed half-way through its weights:
    (root / "epoch-0003.tmp").mkdir()
    saved = checkpoint.latest(str(tmp_path))
    assert saved.epoch == 1 and saved.path.endswith("epoch-0001")  # what LATEST names, complete

    real_save = np.save

    def dies_while_writing(path, array):
        real_save(path, array)
        raise KeyboardInterrupt  # the process goes away inside write()

    monkeypatch.setattr(checkpoint.np, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write(str(tmp_path), 3, _Model(), _Bank(2.0), STATE, {})
    assert checkpoint.latest(str(tmp_path)).path.endswith("epoch-0001")


def test_a_nan_loss_stops_naming_the_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    checkpoint.write(str(tmp_path), 2, _Model(), _Bank(0.0), STATE, {})
    before = sorted(os.listdir(tmp_path / checkpoint.DIRECTORY))
    stop = checkpoint.StopOnNaN(str(tmp_path))
    stop.on_epoch_begin(2)
    stop.on_train_batch_end(4, {"loss": 0.3})
    with pytest.raises(TrainingError, match=r"nan at epoch 3, step 6;.*checkpoint after epoch 2 is kept"):
        stop.on_train_batch_end(5, {"loss": float("nan")})
    assert sorted(os.listdir(tmp_path / checkpoint.DIRECTORY)) == before


# --- Damaged data is named ------------------------------------------------------------------------


def _copy(tiny_digits_dir, tmp_path):
    target = tmp_path / "digits"
    shutil.copytree(tiny_digits_dir, target)
    return target


def test_a_corrupt_shard_is_named(tiny_digits_dir, tmp_path):
    data_dir = _copy(tiny_digits_dir, tmp_path)
    manifest = records.read_manifest(str(data_dir / "train"))
    shard = manifest.shard_paths[1]
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size: only the CRC can tell
    open(shard, "wb").write(bytes(data))
    with pytest.raises(DataError, match=re.escape(shard) + r" is damaged \(.*(CRC|corrupt)"):
        pipeline.read_labels(manifest)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_main.py"), f"--data_dir={data_dir}",
                             f"--model_dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("train_main.py:")]
    assert len(lines) == 1 and lines[0].startswith(f"train_main.py: error: {shard} is damaged")
    assert "{{" not in lines[0] and "[Op:" not in lines[0]  # TensorFlow's internal wrapping is gone
    assert lines[0].endswith(f"Delete {data_dir}: the next run rebuilds it.")  # digits is rebuilt, not converted


def test_a_truncated_shard_is_named(tiny_digits_dir, tmp_path):
    data_dir = _copy(tiny_digits_dir, tmp_path)
    manifest = records.read_manifest(str(data_dir / "val"))
    shard = manifest.shard_paths[0]
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) - 100])
    manifest = records.Manifest(**{**vars(manifest), "shards": tuple(
        records.Shard(s.file, s.num_examples, os.path.getsize(p), s.sha256)
        for s, p in zip(manifest.shards, manifest.shard_paths))})  # a manifest that does not notice the size
    with pytest.raises(DataError, match=re.escape(shard) + " is damaged"):
        pipeline.read_labels(manifest)


def test_labels_of_the_wrong_length_name_the_shard(tmp_path):
    import tensorflow as tf

    image = tf.io.encode_png(np.zeros((2, 2, 3), np.uint8)).numpy()
    manifest = raw_fixtures.write_split(str(tmp_path), dataset="toy", split="train", class_names=("a", "b"),
                                   examples=[(image, "x.png", [1.0, 0.0, 0.0], [1.0, 0.0, 0.0])])
    with pytest.raises(DataError, match=re.escape(manifest.shard_paths[0]) + " is damaged.*label"):
        pipeline.read_labels(manifest)


def test_a_manifest_naming_a_shard_outside_its_directory_is_refused(tiny_digits_dir, tmp_path):
    data_dir = _copy(tiny_digits_dir, tmp_path)
    path = data_dir / "val" / records.MANIFEST
    manifest = json.loads(path.read_text())
    for name in ("..", "../train/" + manifest["shards"][0]["file"]):
        manifest["shards"][0]["file"] = name
        path.write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=re.escape(f"shard name {name!r} must be a plain file name")):
            records.read_manifest(str(data_dir / "val"))


def test_verbose_adds_the_traceback(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "train_main.py"), "--dataset=voc", "--weights=none",
               f"--data_dir={tmp_path / 'nowhere'}"]
    quiet_run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    loud_run = subprocess.run(command + ["--verbose"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert quiet_run.returncode == loud_run.returncode == 2
    assert "Traceback" not in quiet_run.stderr and "Traceback" in loud_run.stderr
    assert "train_main.py: error:" in loud_run.stderr


# --- Security: what the code never does ------------------------------------------------------------


def _sources():
    for folder in ("spml_tf", "bench"):
        for root, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if name.endswith(".py"):
                    yield os.path.join(root, name), open(os.path.join(root, name)).read()
    yield os.path.join(ROOT, "train_main.py"), open(os.path.join(ROOT, "train_main.py")).read()


def test_nothing_unpickles_and_every_keras_file_loads_in_safe_mode():
    for path, text in _sources():
        assert "allow_pickle=True" not in text, path
        assert "pickle.load" not in text, path
        for call in re.findall(r"load_model\([^)]*\)", text):
            assert "safe_mode=True" in call, f"{path}: {call}"


@pytest.mark.slow
def test_ll_cp_corrections_survive_a_kill(tiny_digits_dir, tmp_path):
    """LL-Cp's permanent corrections are in the checkpointed label bank: killed after an epoch that corrected
    labels, the resumed run ends with the bank and results of an uninterrupted one. With LL's VOC optimizer (torch's
    SGD, momentum and weight decay, the head at 10x): its momentum and the multiplier survive the kill too."""
    args = [f"--data_dir={tiny_digits_dir}", "--loss=ll_cp", "--ll_delta=2", "--epochs=4", "--patience=10",
            "--image_size=16", "--batch_size=16", "--deterministic", "--optimizer=sgd", "--learning_rate=0.01",
            "--weight_decay=0.001", "--head_lr_mult=10"]
    whole = train_main(*args, f"--model_dir={tmp_path / 'whole'}")
    assert whole.wait(600) == 0, whole.stderr.read()[-3000:]

    killed_dir = tmp_path / "killed"
    run = train_main(*args, f"--model_dir={killed_dir}")
    deadline = time.monotonic() + 600
    while run.poll() is None and time.monotonic() < deadline:
        saved = checkpoint.latest(str(killed_dir)) if (killed_dir / checkpoint.DIRECTORY).exists() else None
        if saved is not None and saved.epoch >= 2:
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(60)
    saved = checkpoint.latest(str(killed_dir))
    assert run.returncode == -signal.SIGKILL and 2 <= saved.epoch < 4
    bank = np.load(os.path.join(saved.path, checkpoint.BANK))
    observed = pipeline.read_labels(records.read_manifest(os.path.join(tiny_digits_dir, "train"))).observed
    assert ((bank == 1) & (observed == 0)).any()  # epoch 2 corrected labels, and the checkpoint holds them

    again = train_main(*args, f"--model_dir={killed_dir}")
    assert again.wait(600) == 0, again.stderr.read()[-3000:]
    (results, bank), (expected, expected_bank) = outcome(killed_dir), outcome(tmp_path / "whole")
    np.testing.assert_array_equal(bank, expected_bank)
    assert results == expected
    corrected = [record["ll_corrected_labels"] for record in results["history"]]
    assert corrected[0] == 0 and all(count > 0 for count in corrected[1:])
