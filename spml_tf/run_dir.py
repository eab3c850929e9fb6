"""A training run's directory: what it holds, and the lock that gives it to one run at a time.

A run directory is ours when it is new, empty, or holds what a run writes
(its lock file, results.json or checkpoint/). Anything else is a user's
folder: training refuses it rather than writing over it.

The lock is an exclusive `flock` on `<model_dir>/.lock`, held for the whole
run. The operating system drops it when the process ends in any way, a
SIGKILL included, so a killed run can be resumed at once, and a second run
started on the same directory stops with one line naming the holder's pid.
"""

import os

from spml_tf import file_lock
from spml_tf.errors import UsageError

LOCK = ".lock"
RESULTS = "results.json"
MODEL_FILE = "model.keras"
BEST_WEIGHTS = "best.weights.h5"
LABEL_BANK = "label_bank.npy"
CHECKPOINT = "checkpoint"
TENSORBOARD = "tensorboard"
WORKERS = "workers"  # model_dir/workers/<index>: the files of the other workers of a multi-worker run

# Entries that only a run writes: a directory holding one of them was made by a run.
_RUN_MARKS = (LOCK, RESULTS, CHECKPOINT)


def check(model_dir):
    """UsageError unless `model_dir` may hold a run: new, empty, or a run's (a user's file or folder is refused)."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UsageError(f"--model_dir={model_dir!r} is a file, not a directory: pass a directory for the run")
    if os.path.isdir(model_dir):
        foreign = [name for name in os.listdir(model_dir) if name != WORKERS]
        if foreign and not any(mark in foreign for mark in _RUN_MARKS):
            shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(f"--model_dir={model_dir!r} holds files that no training run wrote ({shown}); "
                             "pass a new or empty directory, nothing in it is touched")


def claim(model_dir):
    """Checks that `model_dir` may hold a run, creates it and locks it for this process (a file_lock.FileLock).

    UsageError when it is a file, a user's non-empty folder, or locked by another
    running process (named by its pid).
    """
    check(model_dir)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the run directory {model_dir}: {error.strerror}") from None
    try:
        return file_lock.acquire(os.path.join(model_dir, LOCK))
    except file_lock.Busy as busy:
        raise UsageError(f"{model_dir} is in use by another training run (pid {busy.pid}); wait for it to end, "
                         "or pass another --model_dir") from None
