"""An exclusive lock on a file, held while this process keeps it (the OS drops it when the process ends)."""

import errno
import fcntl
import os
import time

from spml_tf.core.errors import UsageError

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class FileLock:
    """An open file under an exclusive `flock`, which names its holder's pid. `release()` or the process's end
    (a SIGKILL included) frees it."""

    def __init__(self, path, handle):
        self.path = path
        self._handle = handle

    def release(self):
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


def holder(path):
    """The pid written in a lock file, as text ("unknown" if none)."""
    try:
        with open(path) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def acquire(path, on_wait=None, timeout=600.0, poll_seconds=0.5):
    """Locks `path` (created if needed). If another process holds it: with `on_wait`, calls on_wait(pid) once and
    waits for it, up to `timeout` seconds (then Busy); without, raises Busy at once. Busy carries the pid."""
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise UsageError(f"cannot create the lock file {path}: {error.strerror}") from None
    waiting, deadline = False, None
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as error:
            if error.errno not in _BUSY:
                handle.close()
                raise UsageError(f"cannot lock {path}: {error.strerror}") from None
            if on_wait is None or (waiting and time.monotonic() > deadline):
                handle.close()
                raise Busy(holder(path)) from None
            if not waiting:
                on_wait(holder(path))
                waiting, deadline = True, time.monotonic() + timeout
            time.sleep(poll_seconds)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return FileLock(path, handle)


class Busy(Exception):
    """Another process holds the lock; `pid` is what it wrote."""

    def __init__(self, pid):
        super().__init__(pid)
        self.pid = pid
