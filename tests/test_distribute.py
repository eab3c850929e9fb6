"""Distribution on CPU: 2 logical devices stand in for 2 GPUs, 2 processes on 127.0.0.1 for 2 machines."""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from spml_tf import config as config_lib, distribute, multi_worker_compat, train
from spml_tf.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(*args):
    """Runs tests/distribute_check.py (the CPU split in two) and returns the JSON it prints."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distribute_check.py"), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_mirrored_step_equals_the_one_device_step():
    """Two replicas on one global batch compute the loss and the Adam update one device computes."""
    for name, outcome in check("step").items():
        assert outcome["loss_mirrored"] == pytest.approx(outcome["loss_one_device"], abs=1e-5), name
        assert outcome["max_weight_difference"] < 1e-5, name


def test_the_global_batch_must_split_over_the_replicas():
    assert "--batch_size=7 is the global batch and must split evenly over the 2 replicas" in check(
        "uneven_batch")["error"]


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker", 8)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 3}}')
    with pytest.raises(UsageError, match="not a worker cluster"):
        distribute.make_strategy("multi_worker", 8)


@pytest.mark.slow
def test_em_apl_trains_mirrored_end_to_end(tiny_digits_dir, tmp_path):
    outcome = check("train", tiny_digits_dir, str(tmp_path))
    assert len(outcome["apl_rounds"]) == 2 and outcome["apl_rounds"][0]["precision"] > 0
    assert outcome["test_map"] > 0


def test_precision_policies_train_and_leave_the_global_policy_alone(tiny_digits_dir, tmp_path):
    import keras

    for precision in ("mixed_bfloat16", "mixed_float16"):
        config = config_lib.from_overrides("digits", data_dir=tiny_digits_dir, model_dir=str(tmp_path / precision),
                                           epochs=1, loss="em", image_size=16, mixed_precision=precision,
                                           jit_compile=precision == "mixed_bfloat16")
        results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
        assert np.isfinite(results["history"][0]["loss"]) and results["test"]["map"] > 0
        assert keras.mixed_precision.global_policy().name == "float32"
        model = keras.saving.load_model(str(tmp_path / precision / train.MODEL_FILE), safe_mode=True)
        assert model.output.dtype == "float32"  # logits, and so losses and metrics, stay float32


# --- Two workers on 127.0.0.1 -------------------------------------------------------------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(command, env_extra=None):
    """Starts one process per worker with its TF_CONFIG; returns their CompletedProcess-like results."""
    ports = _free_ports(2)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), **(env_extra or {})}
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outcomes = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        outcomes.append((process.returncode, stdout, stderr))
    return outcomes


def _h5_arrays(path):
    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.append((name, item[()])) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_two_workers_train_to_identical_weights_and_label_banks(tiny_digits_dir, tmp_path):
    model_dir = tmp_path / "run"
    outcomes = _workers([sys.executable, os.path.join(ROOT, "train_main.py"), "--strategy=multi_worker",
                         f"--data_dir={tiny_digits_dir}", f"--model_dir={model_dir}", "--epochs=3",
                         "--warmup_epochs=1", "--patience=10", "--image_size=16", "--batch_size=32"])
    for code, _, stderr in outcomes:
        assert code == 0, stderr[-3000:]
    chief, worker = model_dir, model_dir / "workers" / "1"
    assert "2 replica(s), global batch 32" in outcomes[0][1]
    np.testing.assert_array_equal(np.load(chief / train.LABEL_BANK), np.load(worker / train.LABEL_BANK))
    for (name, a), (_, b) in zip(_h5_arrays(chief / train.BEST_WEIGHTS), _h5_arrays(worker / train.BEST_WEIGHTS)):
        np.testing.assert_array_equal(a, b, err_msg=name)
    chief_results = json.load(open(chief / train.RESULTS))
    assert chief_results["history"] == json.load(open(worker / train.RESULTS))["history"]
    assert len(chief_results["apl_rounds"]) == 2


WITHOUT_PATCH = """
import json, os, sys
import numpy as np, tensorflow as tf, keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
x, y = np.ones((16, 3), np.float32), np.ones((16, 2), np.float32)
model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
"""


@pytest.mark.slow
def test_keras_still_needs_the_multi_worker_patch():
    """Plain Keras under MultiWorkerMirroredStrategy fails as multi_worker_compat says. When this test fails,
    Keras has fixed it: delete spml_tf/multi_worker_compat.py."""
    assert multi_worker_compat.needed()
    outcomes = _workers([sys.executable, "-c", WITHOUT_PATCH])
    assert all(code != 0 for code, _, _ in outcomes)
    assert any("PerReplica" in stderr or "Invalid reduction dimension" in stderr for _, _, stderr in outcomes)
