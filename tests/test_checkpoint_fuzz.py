"""Every field of a real checkpoint's state mutated (type, sign, size, truncation): one clear line each time, and
nothing restored or written; a mutation that keeps the state sound resumes (issue 21).

The mutations run through the trainer's own resume steps (checkpoint.latest, check_matches, check_callbacks,
restore_model) in this process, fast; a few go through the command line for the exit code and the one line.
"""

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from spml_tf import config as config_lib, methods as losses
from spml_tf.training import trainer as train
from spml_tf.data import datasets
from spml_tf.training import checkpoint, distribute, run_dir
from spml_tf.core.errors import DataError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAMAGED = "the checkpoint is damaged ("


def _config(data_dir, model_dir):
    return config_lib.from_overrides("digits", data_dir=data_dir, model_dir=str(model_dir), epochs=3,
                                     warmup_epochs=1, patience=10, image_size=16, batch_size=32)


@pytest.fixture(scope="module")
def run(tiny_digits_dir, tmp_path_factory):
    """A run of em_apl stopped after epoch 2 of 3: history, APL rounds and early stopping all hold state."""
    model_dir = tmp_path_factory.mktemp("fuzz") / "run"
    config = config_lib.from_overrides("digits", data_dir=tiny_digits_dir, model_dir=str(model_dir), epochs=2,
                                       warmup_epochs=1, patience=10, image_size=16, batch_size=32)
    train.train_and_evaluate(config, log=lambda message: None)
    saved = checkpoint.latest(str(model_dir))
    state = json.load(open(os.path.join(saved.path, checkpoint.STATE)))
    state["identity"]["config"]["epochs"] = 3  # as if the run had been asked for 3 epochs: it is mid-run
    json.dump(state, open(os.path.join(saved.path, checkpoint.STATE), "w"))
    return model_dir


@pytest.fixture(scope="module")
def resume_steps(tiny_digits_dir, run):
    """resume(model_dir): the trainer's resume checks of train._run, in order, on a trainer built once."""
    config = _config(tiny_digits_dir, run)
    splits = datasets.load("digits", tiny_digits_dir)
    labels = {split: splits.labels(split) for split in ("train", "val", "test")}
    placement = distribute.make_strategy("one_device", config.batch_size)
    loss = losses.for_config(config)
    data = train.make_datasets(config, splits, loss, 0, placement)
    trainer = train.build_trainer(config, splits, labels["train"], loss, placement, log=lambda message: None)
    identity = checkpoint.identity(config, splits.class_names, splits.train)
    callbacks, _ = train.make_callbacks(config, splits, labels, data, trainer, loss, str(run), identity, None,
                                        log=lambda message: None)
    stateful = callbacks[-1].stateful
    assert sorted(stateful) == ["apl", "early_stopping", "history"]

    def resume(model_dir):
        saved = checkpoint.latest(str(model_dir))
        saved.check_matches(identity)
        saved.check_callbacks(stateful, trainer.training_model)
        saved.restore_model(trainer.training_model, trainer.bank)
        for callback in stateful.values():
            saved.restore_callback(callback)

    return resume


def _paths(value, path=()):
    """The path of every value in a JSON tree, containers included (of lists, the first item only)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], path + (0,))


def _mutations(value):
    """(name, new value) for a value: another type, the opposite sign, another size."""
    yield "a string", "x"
    yield "null", None
    if isinstance(value, bool):
        yield "a number", 1
    elif isinstance(value, (int, float)):
        yield "negated", -value - 1
        yield "huge", value * 10**9 + 10**9
        yield "a list", [value]
    elif isinstance(value, list):
        yield "one item more", value + value[:1] if value else [1]
        yield "one item less", value[:-1]
        yield "a record", {"0": value}
    elif isinstance(value, dict):
        yield "a list", list(value.values())
        if value:
            yield "a field less", dict(list(value.items())[1:])
        yield "a field more", {**value, "extra": 1}
    elif isinstance(value, str):
        yield "a number", 7


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def _fingerprint(model_dir):
    """Every file's bytes under the run directory (the lock file's pid aside)."""
    found = {}
    for root, _, names in os.walk(model_dir):
        for name in names:
            path = os.path.join(root, name)
            if name != run_dir.LOCK:
                found[os.path.relpath(path, model_dir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def _state_paths(state):
    for path in _paths(state):
        if path[:2] == ("identity", "config") and len(path) > 2 and path[2] != "epochs":
            continue  # every config field is compared the same way: one stands for all
        yield path


def test_every_field_of_the_state_mutated_is_refused_in_one_line_or_resumes_soundly(run, resume_steps, tmp_path):
    saved = checkpoint.latest(str(run))
    state = json.load(open(os.path.join(saved.path, checkpoint.STATE)))
    outcomes = {"refused": 0, "resumed": 0}
    for k, path in enumerate(_state_paths(state)):
        for name, value in _mutations(_get(state, path)):
            model_dir = tmp_path / f"m{k}-{name.replace(' ', '_')}"
            shutil.copytree(run, model_dir)
            mutated = _set(copy.deepcopy(state), path, value)
            latest_path = os.path.join(checkpoint.latest(str(model_dir)).path, checkpoint.STATE)
            json.dump(mutated, open(latest_path, "w"))
            before = _fingerprint(model_dir)
            where = f"{'.'.join(map(str, path)) or 'the state'} made {name}"
            try:
                resume_steps(model_dir)
                outcomes["resumed"] += 1
            except (DataError, UsageError) as error:
                message = str(error)
                assert "\n" not in message, where
                assert message.startswith(DAMAGED) or "holds a checkpoint of a different run" in message or \
                    "holds a checkpoint trained on other data" in message, (where, message)
                outcomes["refused"] += 1
            assert _fingerprint(model_dir) == before, where
            shutil.rmtree(model_dir)
    assert outcomes["refused"] > 100, outcomes  # the mutations do mutate: most of them must be refused
    assert outcomes["resumed"] > 0, outcomes  # and a sound one (another precision, say) still resumes


@pytest.mark.parametrize("name", [checkpoint.STATE, "early_stopping.npz", checkpoint.BANK, checkpoint.WEIGHTS])
def test_every_file_truncated_at_many_places_is_refused_in_one_line(run, resume_steps, tmp_path, name):
    path = os.path.join(checkpoint.latest(str(run)).path, name)
    data = open(path, "rb").read()
    for cut in sorted({0, 1, 8, 64, 300, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1}):
        model_dir = tmp_path / f"cut{cut}"
        shutil.copytree(run, model_dir)
        open(os.path.join(checkpoint.latest(str(model_dir)).path, name), "wb").write(data[:cut])
        before = _fingerprint(model_dir)
        with pytest.raises(DataError) as error:
            resume_steps(model_dir)
        assert str(error.value).startswith(DAMAGED) and "\n" not in str(error.value), (name, cut)
        assert _fingerprint(model_dir) == before
        shutil.rmtree(model_dir)


def test_an_array_declaring_more_than_its_bytes_is_refused_before_it_is_allocated(run, resume_steps, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(run, model_dir)
    saved = checkpoint.latest(str(model_dir)).path
    header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
    buffer = open(os.path.join(saved, checkpoint.BANK), "wb")
    np.lib.format.write_array_header_1_0(buffer, header)  # 37 GiB declared, no byte of it present
    buffer.close()
    with pytest.raises(DataError, match=r"label_bank.npy is not the training set's label matrix \(it holds an array "
                                        r"of shape \(100000, 100000\), not \(160, 10\)\)"):
        resume_steps(model_dir)


@pytest.mark.parametrize("epoch, detail", [
    (-3, "state.json.epoch: -3 is below 0"),
    (999, "says epoch 999, its folder's name epoch 2"),
])
def test_an_epoch_counter_that_disagrees_with_its_folder_is_damaged(run, resume_steps, tmp_path, epoch, detail):
    model_dir = tmp_path / "run"
    shutil.copytree(run, model_dir)
    path = os.path.join(checkpoint.latest(str(model_dir)).path, checkpoint.STATE)
    state = json.load(open(path))
    state["epoch"] = epoch
    json.dump(state, open(path, "w"))
    with pytest.raises(DataError, match=detail):
        resume_steps(model_dir)


def test_an_epoch_beyond_the_runs_epochs_is_damaged_even_when_its_folder_agrees(run, resume_steps, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(run, model_dir)
    root = model_dir / checkpoint.DIRECTORY
    (root / "epoch-0002").rename(root / "epoch-0999")
    (root / checkpoint.LATEST).write_text("epoch-0999\n")
    path = root / "epoch-0999" / checkpoint.STATE
    state = json.load(open(path))
    state["epoch"] = 999
    json.dump(state, open(path, "w"))
    with pytest.raises(DataError, match=r"says 999 epochs are done, outside 0..--epochs=3"):
        resume_steps(model_dir)


def test_resuming_on_other_data_says_so_not_damaged(tiny_digits_dir, run, tmp_path):
    from spml_tf.data.datasets import digits

    other = str(tmp_path / "other")
    saved = digits.NUM_OFFICIAL_TRAIN, digits.NUM_TEST, digits.SHARD_SIZE_MB
    digits.NUM_OFFICIAL_TRAIN, digits.NUM_TEST, digits.SHARD_SIZE_MB = 150, 100, 0.05
    try:
        digits.build(other)
    finally:
        digits.NUM_OFFICIAL_TRAIN, digits.NUM_TEST, digits.SHARD_SIZE_MB = saved
    model_dir = tmp_path / "run"
    shutil.copytree(run, model_dir)
    with pytest.raises(UsageError, match=r"holds a checkpoint trained on other data \(160 training images there, "
                                         r"120 now\)\. Resume it with the --data_dir it was trained on"):
        train.train_and_evaluate(_config(other, model_dir), log=lambda message: None)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["apl", "npz", "epoch"])
def test_the_command_line_gives_one_line_and_exit_1_and_writes_nothing(tiny_digits_dir, run, tmp_path, damage):
    model_dir = tmp_path / "run"
    shutil.copytree(run, model_dir)
    saved = checkpoint.latest(str(model_dir)).path
    if damage == "npz":
        path = os.path.join(saved, "early_stopping.npz")
        open(path, "r+b").truncate(os.path.getsize(path) // 2)
    else:
        path = os.path.join(saved, checkpoint.STATE)
        state = json.load(open(path))
        if damage == "apl":
            state["callbacks"]["apl"]["initial_unannotated"] = "garbage"
        else:
            state["epoch"] = -3
        json.dump(state, open(path, "w"))
    before = _fingerprint(model_dir)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_main.py"), f"--data_dir={tiny_digits_dir}",
                             f"--model_dir={model_dir}", "--epochs=3", "--warmup_epochs=1", "--patience=10",
                             "--image_size=16", "--batch_size=32"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train_main.py:")]
    assert len(lines) == 1 and lines[0].startswith(f"train_main.py: error: {DAMAGED}"), result.stderr[-2000:]
    assert "Resuming" not in result.stdout
    assert _fingerprint(model_dir) == before
