"""Distribution on CPU: 2 logical devices stand in for 2 GPUs, 2 processes on 127.0.0.1 for 2 machines."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from spml_tf import config as config_lib, methods as losses
from spml_tf.training import trainer as train
from spml_tf.training import distribute, multi_worker_compat, run_dir
from spml_tf.core.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(*args, devices=2):
    """Runs tests/distribute_check.py (the CPU split in `devices`) and returns the JSON it prints."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distribute_check.py"), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "SPML_CHECK_DEVICES": str(devices)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_mirrored_step_equals_the_one_device_step():
    """Two replicas on one global batch compute the loss and the Adam update one device computes (the head at 10x
    the learning rate): for LL the ranking over the global batch, for LL-Cp the same corrections."""
    outcomes = check("step")
    assert set(outcomes) == {"an", "em", "em_apl", "ll_r", "ll_ct", "ll_cp", "gr", "gr_apl"}
    for name, outcome in outcomes.items():
        assert outcome["loss_mirrored"] == pytest.approx(outcome["loss_one_device"], abs=1e-5), name
        assert outcome["max_weight_difference"] < 1e-5, name
        assert outcome["corrections_equal"], name
    assert outcomes["ll_cp"]["corrections"] > 0


@pytest.mark.slow
def test_resnet50_batch_norm_takes_the_global_batchs_statistics():
    """Two replicas compute the one-device step of ResNet-50 (no weights, 32 px, global batch 8, em_apl): the loss,
    and BatchNorm's moving statistics after the step. Keras's own BatchNormalization, normalising each replica's
    half batch, does not (the control)."""
    outcome = check("resnet_step")
    ours, control = outcome["ours"], outcome["keras_batch_norm"]
    assert ours["loss_mirrored"] == pytest.approx(ours["loss_one_device"], rel=1e-4)
    assert ours["max_moving_statistic_relative_difference"] < 1e-3
    assert control["loss_mirrored"] != pytest.approx(control["loss_one_device"], rel=1e-3)
    assert control["max_moving_statistic_relative_difference"] > 0.1


@pytest.mark.parametrize("devices, num_examples, split", [
    (2, 35, "6 + 5"), (2, 25, "1 + 0"), (3, 28, "2 + 2 + 0"),
    pytest.param(3, 35, "4 + 4 + 3", marks=pytest.mark.slow),
])
def test_every_loss_on_replicas_equals_one_device_when_the_last_batch_splits_unevenly(devices, num_examples, split):
    """Issue 22: an epoch of global batches of 12 whose last batch (num_examples % 12) TensorFlow splits over the
    replicas as `split`; each replica's mean used to be averaged instead of the global batch's. The weights after
    the epoch and the reported loss equal one device's, for every loss of the registry (LL's global ranking, ROLE's
    estimator and both its regularisers, EPR's batch penalty included)."""
    outcomes = check("uneven", str(num_examples), devices=devices)
    assert outcomes.pop("replicas") == devices
    assert set(outcomes) == set(losses.LOSSES)
    for name, outcome in outcomes.items():
        assert outcome["max_weight_difference"] < 1e-6, (name, outcome)
        assert outcome["loss_mirrored"] == pytest.approx(outcome["loss_one_device"], abs=1e-6), (name, outcome)


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
        model = keras.saving.load_model(str(tmp_path / precision / run_dir.MODEL_FILE), safe_mode=True)
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
    np.testing.assert_array_equal(np.load(chief / run_dir.LABEL_BANK), np.load(worker / run_dir.LABEL_BANK))
    for (name, a), (_, b) in zip(_h5_arrays(chief / run_dir.BEST_WEIGHTS), _h5_arrays(worker / run_dir.BEST_WEIGHTS)):
        np.testing.assert_array_equal(a, b, err_msg=name)
    chief_results = json.load(open(chief / run_dir.RESULTS))
    assert chief_results["history"] == json.load(open(worker / run_dir.RESULTS))["history"]
    assert len(chief_results["apl_rounds"]) == 2


@pytest.mark.slow
def test_two_workers_equal_one_device_when_the_last_batch_splits_unevenly():
    """Issue 22 under MultiWorkerMirroredStrategy: two processes of one replica each, an epoch of 35 examples in
    global batches of 12 (the last splits 6 + 5 over the workers), every loss: both workers end with the weights
    one device computes."""
    script = [sys.executable, os.path.join(ROOT, "tests", "distribute_check.py"), "epoch", "35"]
    env = {"SPML_CHECK_DEVICES": "1"}
    one = subprocess.run(script, capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **env})
    assert one.returncode == 0, one.stderr[-3000:]
    reference = json.loads(one.stdout.strip().splitlines()[-1])
    assert reference.pop("replicas") == 1
    for code, stdout, stderr in _workers(script, env):
        assert code == 0, stderr[-3000:]
        outcome = json.loads(stdout.strip().splitlines()[-1])
        assert outcome.pop("replicas") == 2
        for name, expected in reference.items():
            difference = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                             for a, b in zip(expected["weights"], outcome[name]["weights"]))
            assert difference < 1e-6, (name, difference)
            assert outcome[name]["loss"] == pytest.approx(expected["loss"], abs=1e-6), name


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


# --- A worker that never starts or dies: the others stop with one line, never hang ----------------------


class _Worker:
    """One train_main.py worker process whose output lines are collected as they come."""

    def __init__(self, index, ports, args):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train_main.py"), "--strategy=multi_worker", *args], cwd=ROOT,
            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)}, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.stdout, self.stderr = [], []
        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, out=lines: out.extend(iter(s.readline, "")), daemon=True).start()

    def wait_for(self, text, timeout=300):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stdout):
            assert self.process.poll() is None and time.monotonic() < deadline, "".join(self.stderr)[-3000:]
            time.sleep(0.05)

    def finish(self, timeout):
        """(exit code, our stderr lines, seconds it took) once the process has ended."""
        start = time.monotonic()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running after {timeout} s:\n" + "".join(self.stderr)[-3000:]) from None
        time.sleep(0.2)  # the reader threads take the last lines
        ours = [line.rstrip("\n") for line in self.stderr if line.startswith("train_main.py:")]
        return code, ours, time.monotonic() - start


def _worker_args(data_dir, model_dir, *extra):
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--image_size=16", "--batch_size=32", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_a_worker_whose_peer_never_starts_says_so_and_gives_up(tiny_digits_dir, tmp_path, index):
    ports = _free_ports(2)
    worker = _Worker(index, ports, _worker_args(tiny_digits_dir, tmp_path, "--worker_timeout=4", "--epochs=2",
                                                "--warmup_epochs=1"))
    code, lines, _ = worker.finish(timeout=120)
    other = 1 - index
    assert any(f"this is worker {index} (127.0.0.1:{ports[index]}) of 2; waiting for worker {other} at "
               f"127.0.0.1:{ports[other]} to start (up to 4 s, --worker_timeout)" in line for line in worker.stdout)
    assert code == 1 and lines == [
        f"train_main.py: error: gave up after 4 s waiting for worker {other} at 127.0.0.1:{ports[other]}: start each "
        "with the same command and its own TF_CONFIG task index, or raise --worker_timeout"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_waiting_worker_stops_promptly_on_a_signal(tiny_digits_dir, tmp_path, signum):
    worker = _Worker(0, _free_ports(2), _worker_args(tiny_digits_dir, tmp_path, "--epochs=2", "--warmup_epochs=1"))
    worker.wait_for("waiting for worker 1")
    worker.process.send_signal(signum)
    code, lines, seconds = worker.finish(timeout=60)
    assert code == 128 + signum and seconds < 15
    assert lines == [f"train_main.py: stopped by {signal.Signals(signum).name}; what was saved stays: run the same "
                     "command to continue"]


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_worker_killed_mid_training_stops_the_other_with_an_error(tiny_digits_dir, tmp_path, killed):
    ports = _free_ports(2)
    args = _worker_args(tiny_digits_dir, tmp_path, "--epochs=40", "--patience=40", "--loss=em")
    workers = [_Worker(index, ports, args) for index in range(2)]
    try:
        workers[0].wait_for("epoch 1/40")
        workers[killed].process.kill()
        survivor = 1 - killed
        code, lines, seconds = workers[survivor].finish(timeout=120)
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"train_main.py: error: lost contact with worker {killed} (127.0.0.1:"
                                   f"{ports[killed]}) during training"), lines
        assert "start every worker again with the same command to resume" in lines[0]
    finally:
        for worker in workers:
            worker.process.kill()
            worker.process.wait()


@pytest.mark.parametrize("workers, index, message", [
    (["localhost:12345", "localhost:99999"], 0, "worker address 'localhost:99999' is not host:port"),
    (["localhost:12345", "localhost:http"], 0, "worker address 'localhost:http' is not host:port"),
    (["localhost"], 0, "worker address 'localhost' is not host:port"),
    ([":12345"], 0, "worker address ':12345' is not host:port"),
    (["localhost:0"], 0, "worker address 'localhost:0' is not host:port"),
    (["localhost:12345"], -1, r"task index -1 is not one of the 1 worker\(s\) of its cluster \(0 to 0\)"),
    (["localhost:12345", "localhost:12346"], 2, r"task index 2 is not one of the 2 worker\(s\) .*\(0 to 1\)"),
])
def test_a_bad_tf_config_address_or_index_is_one_usage_error_naming_it(monkeypatch, workers, index, message):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers},
                                                "task": {"type": "worker", "index": index}}))
    with pytest.raises(UsageError, match=f"^TF_CONFIG: {message}"):
        distribute._worker_from_tf_config()


@pytest.mark.parametrize("tf_config", ['{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
                                       '{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
                                       '{"cluster": {"worker": [1]}, "task": {"type": "worker", "index": 0}}',
                                       '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "x"}}',
                                       '[1]', 'not json'])
def test_a_tf_config_that_is_no_worker_cluster_is_one_usage_error(monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UsageError, match="is not a worker cluster of host:port addresses"):
        distribute._worker_from_tf_config()


def test_a_good_tf_config_gives_the_index_and_addresses(monkeypatch):
    workers = ["host1:12345", "[::1]:65535"]
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribute._worker_from_tf_config() == (1, tuple(workers))
    assert distribute._host_port(workers[1]) == ("::1", 65535)
