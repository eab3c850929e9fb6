"""Which devices train: one, every local GPU (MirroredStrategy), or several machines (MultiWorkerMirroredStrategy).

`--batch_size` is the GLOBAL batch: each step, every replica takes an equal
slice of it (of an epoch's partial last batch, the share TensorFlow gives it,
maybe none). Each replica's loss is its sum over the global batch's size
(losses.global_mean), so N replicas compute the step one device computes on the
same global batch (tests/test_distribute.py checks every loss, on uneven splits too).
"""

import dataclasses
import json
import os
import re
import socket
import threading
import time

import tensorflow as tf

from spml_tf.core import stopping
from spml_tf.training import multi_worker_compat
from spml_tf.core.errors import TrainingError, UsageError, reason

WAIT_NOTE_SECONDS = 30  # how often a worker waiting for the others says so
# What TensorFlow raises in a worker whose peer is gone: its heartbeats stopped (about 10 s after it died), or a
# collective was aborted because of it.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The strategy, and which worker this process is (multi-worker training runs one process per machine)."""

    strategy: tf.distribute.Strategy
    worker_index: int = 0
    num_workers: int = 1
    worker_addresses: tuple = ()  # host:port of every worker, from TF_CONFIG

    @property
    def is_chief(self):
        """The worker that writes the run's files; the others write theirs under model_dir/workers/<index>."""
        return self.worker_index == 0

    def lost_worker(self, error):
        """The TrainingError for a TensorFlow error that says another worker is gone."""
        tasks = sorted({int(task) for task in re.findall(r"/job:worker/(?:replica:\d+/)?task:(\d+)", error.message)
                        if int(task) != self.worker_index and int(task) < self.num_workers})
        who = ", ".join(f"worker {task} ({self.worker_addresses[task]})" for task in tasks) or "another worker"
        return TrainingError(f"lost contact with {who} during training ({type(error).__name__}); every worker "
                             "stops. The checkpoint of the last completed epoch is kept: start every worker again "
                             "with the same command to resume")


def make_strategy(name, global_batch_size, worker_timeout=300, log=print):
    """The Placement for --strategy=name; UsageError when the global batch does not split evenly.

    multi_worker waits up to `worker_timeout` seconds for every worker of
    TF_CONFIG to start, saying which ones it waits for, then gives up with a
    TrainingError.
    """
    worker_index, num_workers, addresses = 0, 1, ()
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
        worker_index, addresses = _worker_from_tf_config()
        num_workers = len(addresses)
        multi_worker_compat.apply()
        strategy = _connect_workers(worker_index, addresses, worker_timeout, log)
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UsageError(f"--batch_size={global_batch_size} is the global batch and must split evenly over the "
                         f"{replicas} replicas of --strategy={name}: use a multiple of {replicas}")
    return Placement(strategy, worker_index, num_workers, tuple(addresses))


def _connect_workers(index, addresses, timeout, log):
    """MultiWorkerMirroredStrategy over the TF_CONFIG cluster, once every worker is up, within `timeout` seconds.

    TensorFlow's own wait for the other workers holds the interpreter lock
    without a word and for up to an hour, deaf to Ctrl-C. So first we wait in
    Python (interruptible, saying what for): each worker listens on its own
    address and polls the others' until all answer. TensorFlow then meets
    workers that are there, and its own wait, bounded by the same timeout, is
    only a backstop for a worker that dies in between.
    """
    wait_for_workers(index, addresses, timeout, log)
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    ctx.configure_coordination_service(
        service_type="standalone", service_leader="/job:worker/replica:0/task:0",
        cluster_register_timeout_in_ms=int(timeout * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=len(addresses))])
    ctx.coordination_service.cluster_register_with_barrier = True  # the timeout applies to the whole cluster
    stopping.require_hard_exit()  # from here, the runtime's shutdown waits for every worker
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except LOST_WORKER_ERRORS as error:
        raise TrainingError(f"the workers did not all connect within --worker_timeout={timeout:g} s "
                            f"({reason(error)}); start them all again") from None


def wait_for_workers(index, addresses, timeout, log=print, poll_seconds=0.5):
    """Returns once every other worker's address accepts a connection; TrainingError after `timeout` seconds.

    Meanwhile this worker's own address accepts connections, so that the
    others find it; it is free again when this returns, for TensorFlow.
    """
    host, port = _host_port(addresses[index])
    try:
        listener = socket.create_server(("", port))
    except OSError as error:
        raise UsageError(f"worker {index} cannot listen on port {port} of TF_CONFIG ({error.strerror}): "
                         "is another process using it?") from None
    listener.settimeout(poll_seconds)
    done = threading.Event()
    answering = threading.Thread(target=_answer, args=(listener, done), daemon=True, name="spml-rendezvous")
    answering.start()
    waiting = {other: address for other, address in enumerate(addresses) if other != index}
    started = time.monotonic()
    next_note = started + WAIT_NOTE_SECONDS
    log(f"multi_worker: this is worker {index} ({addresses[index]}) of {len(addresses)}; waiting for "
        f"{_names(waiting)} to start (up to {timeout:g} s, --worker_timeout)")
    try:
        while waiting:
            for other, address in list(waiting.items()):
                try:
                    socket.create_connection(_host_port(address), timeout=poll_seconds).close()
                    del waiting[other]
                except OSError:
                    pass
            elapsed = time.monotonic() - started
            if waiting and elapsed >= timeout:
                raise TrainingError(f"gave up after {timeout:g} s waiting for {_names(waiting)}: start each "
                                    "with the same command and its own TF_CONFIG task index, or raise "
                                    "--worker_timeout")
            if waiting and time.monotonic() >= next_note:
                log(f"multi_worker: still waiting for {_names(waiting)} ({elapsed:.0f} of {timeout:g} s)")
                next_note += WAIT_NOTE_SECONDS
            if waiting:
                time.sleep(poll_seconds)
    finally:
        done.set()
        answering.join()
        listener.close()


def _answer(listener, done):
    """Accepts the other workers' polls until `done`; each poller hangs up first (so no port is left in TIME_WAIT
    on this side, and TensorFlow can listen on it next)."""
    while not done.is_set():
        try:
            connection, _ = listener.accept()
        except (TimeoutError, OSError):
            continue
        with connection:
            connection.settimeout(1.0)
            try:
                connection.recv(1)
            except OSError:
                pass


def _names(workers):
    return ", ".join(f"worker {index} at {address}" for index, address in sorted(workers.items()))


def _host_port(address):
    """(host, port) of a TF_CONFIG worker address `host:port` (or `[IPv6 host]:port`); UsageError naming it unless
    it is one, with a port from 1 to 65535."""
    host, _, port = address.rpartition(":")
    if not (host.strip("[]") and re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise UsageError(f"TF_CONFIG: worker address {address!r} is not host:port with a port from 1 to 65535")
    return host.strip("[]"), int(port)


def _worker_from_tf_config():
    """(this worker's index, every worker's host:port) from TF_CONFIG; UsageError naming what is missing or wrong."""
    text = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise UsageError(f"--strategy=multi_worker reads the cluster from TF_CONFIG, which is not set; e.g. {example}")
    try:
        config = json.loads(text)
        workers, task = config["cluster"]["worker"], config["task"]
        index = int(task["index"])
        is_worker_cluster = (task["type"] == "worker" and isinstance(workers, list) and workers
                             and all(isinstance(address, str) for address in workers))
    except (ValueError, KeyError, TypeError):
        is_worker_cluster = False
    if not is_worker_cluster:
        raise UsageError(f"TF_CONFIG={text!r} is not a worker cluster of host:port addresses; e.g. {example}")
    if not 0 <= index < len(workers):
        raise UsageError(f"TF_CONFIG: task index {index} is not one of the {len(workers)} worker(s) of its cluster "
                         f"(0 to {len(workers) - 1})")
    for address in workers:
        _host_port(address)
    return index, tuple(workers)
