"""A training run's directory: what it holds, and the lock that gives it to one run at a time.

A run directory is ours when it is new, empty, or marked as a run's: the
first run in it writes the file SPML_TF_RUN (as the digits build marks its
own directory). A folder without the mark that holds anything is a user's,
even one holding a results.json: training refuses it rather than write over
it. (A run of an earlier version, which wrote no mark, is recognised by its
lock file beside nothing but the names a run writes, and marked then.)

The lock is an exclusive `flock` on `<model_dir>/.lock`, held for the whole
run. The operating system drops it when the process ends in any way, a
SIGKILL included, so a killed run can be resumed at once, and a second run
started on the same directory stops with one line naming the holder's pid.
"""

import hashlib
import os
import tempfile

from spml_tf.core import file_lock
from spml_tf.core.errors import UsageError, reason

# The layout, read also by commands that must not wait for TensorFlow (export's flags); the functions below import
# it (through files.py, which reaches any filesystem TensorFlow writes) when they run.
LOCK = ".lock"
RESULTS = "results.json"
MODEL_FILE = "model.keras"
BEST_WEIGHTS = "best.weights.h5"
LABEL_BANK = "label_bank.npy"
CHECKPOINT = "checkpoint"
TENSORBOARD = "tensorboard"
WORKERS = "workers"  # model_dir/workers/<index>: the files of the other workers of a multi-worker run

MARK = "SPML_TF_RUN"  # written into every run directory: what makes it ours
CHARTS = ("training.png", "apl.png", "per_class_ap.png")  # what spml-report draws beside results.json
# Every name a run (and spml-report) writes at the top of its directory.
_LAYOUT = (MARK, LOCK, RESULTS, MODEL_FILE, BEST_WEIGHTS, LABEL_BANK, CHECKPOINT, TENSORBOARD, WORKERS) + CHARTS


def of_worker(model_dir, placement):
    """Where a worker writes: the run directory for the chief (and a single process), model_dir/workers/<index> for
    the other workers of a multi-worker run, which train the same model."""
    from spml_tf.core import files

    return model_dir if placement.is_chief else files.join(files.join(model_dir, WORKERS), str(placement.worker_index))


def check(model_dir):
    """UsageError unless `model_dir` may hold a run: new, empty, or marked as a run's (a user's file or folder is
    refused, whatever it holds)."""
    import tensorflow as tf

    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise UsageError(f"--model_dir={model_dir!r} is a file, not a directory: pass a directory for the run")
    if tf.io.gfile.isdir(model_dir):
        entries = [name.rstrip("/") for name in tf.io.gfile.listdir(model_dir) if name.rstrip("/") != WORKERS]
        earlier_version = LOCK in entries and all(_is_layout(name) for name in entries)
        if entries and MARK not in entries and not earlier_version:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise UsageError(f"--model_dir={model_dir!r} holds files that no training run wrote ({shown}); "
                             "pass a new or empty directory, nothing in it is touched")


def _is_layout(name):
    """A name a run writes: one of the layout, or its temporary twin (files.temporary_path)."""
    stem, dot, extensions = name.partition(".")
    return name in _LAYOUT or (stem.endswith("-partial") and stem[: -len("-partial")] + dot + extensions in _LAYOUT)


def claim(model_dir):
    """Checks that `model_dir` may hold a run, creates it and locks it for this process (a file_lock.FileLock).

    UsageError when it is a file, a user's non-empty folder, or locked by another
    running process (named by its pid). A directory on another filesystem
    (gs://, ...) cannot be locked there: the lock is then a local file named
    after it (in `<temporary directory>/spml_tf-locks/`), which keeps out other runs of this
    machine only; the `.lock` file in the directory marks it as a run's.
    """
    import tensorflow as tf

    from spml_tf.core import files

    check(model_dir)
    try:
        tf.io.gfile.makedirs(model_dir)
    except tf.errors.OpError as error:
        raise UsageError(f"cannot create the run directory {model_dir}: {reason(error)}") from None
    lock_path = files.join(model_dir, LOCK)
    if "://" in model_dir:
        if not tf.io.gfile.exists(lock_path):
            files.write_text(lock_path, "spml-tf run directory\n")
        local = os.path.join(tempfile.gettempdir(), "spml_tf-locks")
        os.makedirs(local, exist_ok=True)
        lock_path = os.path.join(local, hashlib.sha256(model_dir.encode()).hexdigest()[:24] + ".lock")
    try:
        lock = file_lock.acquire(lock_path)
    except file_lock.Busy as busy:
        raise UsageError(f"{model_dir} is in use by another training run (pid {busy.pid}); wait for it to end, "
                         "or pass another --model_dir") from None
    mark = files.join(model_dir, MARK)
    if not tf.io.gfile.exists(mark):
        files.write_text(mark, "A directory of spml-tf training runs: the trainer writes here only where it finds "
                               "this file, or an empty directory.\n")
    return lock


def release_unused(model_dir, created):
    """After a run that failed before writing anything (a preset that would not load, ...): the marker and lock
    claim() wrote go again, and the directory too when claim() made it. A directory holding anything else stays."""
    import tensorflow as tf

    from spml_tf.core import files

    try:
        entries = {name.rstrip("/") for name in tf.io.gfile.listdir(model_dir)}
        if not entries <= {MARK, LOCK}:
            return
        for name in entries:
            tf.io.gfile.remove(files.join(model_dir, name))
        if created:
            tf.io.gfile.rmtree(model_dir) if not tf.io.gfile.listdir(model_dir) else None
    except (tf.errors.OpError, OSError):
        pass  # best effort: what stays is a run's marker, which a next run accepts
