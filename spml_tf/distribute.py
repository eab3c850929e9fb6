"""Which devices train: one, every local GPU (MirroredStrategy), or several machines (MultiWorkerMirroredStrategy).

`--batch_size` is the GLOBAL batch: each step, every replica takes an equal
slice of it. Keras divides each replica's loss by the global batch, so N
replicas compute the step one device computes on the same global batch
(tests/test_distribute.py checks it to 1e-5 for `an`, `em` and `em_apl`).
"""

import dataclasses
import json
import os

import tensorflow as tf

from spml_tf import multi_worker_compat
from spml_tf.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Placement:
    """The strategy, and which worker this process is (multi-worker training runs one process per machine)."""

    strategy: tf.distribute.Strategy
    worker_index: int = 0
    num_workers: int = 1

    @property
    def is_chief(self):
        """The worker that writes the run's files; the others write theirs under model_dir/workers/<index>."""
        return self.worker_index == 0


def make_strategy(name, global_batch_size):
    """The Placement for --strategy=name; UsageError when the global batch does not split evenly."""
    worker_index, num_workers = 0, 1
    if name == "auto":  # physical devices: listing them does not start the runtime (multi-worker must come first)
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one_device"
    if name == "one_device":
        # TensorFlow's default strategy: the first GPU if there is one, else the CPU, and no distribution layer.
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        # Without GPUs, every logical CPU device (tests split the CPU in two).
        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        worker_index, num_workers = _worker_from_tf_config()
        multi_worker_compat.apply()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UsageError(f"--batch_size={global_batch_size} is the global batch and must split evenly over the "
                         f"{replicas} replicas of --strategy={name}: use a multiple of {replicas}")
    return Placement(strategy, worker_index, num_workers)


def _worker_from_tf_config():
    """(this worker's index, number of workers) from TF_CONFIG; UsageError naming what is missing."""
    text = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise UsageError(f"--strategy=multi_worker reads the cluster from TF_CONFIG, which is not set; e.g. {example}")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
        assert config["task"]["type"] == "worker" and 0 <= index < len(workers)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UsageError(f"TF_CONFIG={text!r} is not a worker cluster; e.g. {example}") from None
    return index, len(workers)
