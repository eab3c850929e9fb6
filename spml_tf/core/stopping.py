"""How a training process stops when asked to: SIGINT and SIGTERM end it promptly, with one line.

`install()` (train_main calls it before TensorFlow starts any thread) blocks
both signals in every thread and hands them to one thread of ours, so
TensorFlow's own SIGTERM handler (installed by the multi-worker runtime, which
only logs the signal) never sees them. That thread raises `Stopped` in the main
thread, which unwinds normally (the checkpoint of the last completed epoch
stays, see checkpoint.py). If the main thread has not ended within
GRACE_SECONDS, because it waits inside TensorFlow for a worker that is gone, or
a second signal comes, the process exits at once with the same line: nothing
needs saving, every file of a run is replaced atomically.

`exit()` ends the process with an exit code. After a multi-worker runtime has
started, TensorFlow's shutdown waits for the other workers, which may be dead;
then `require_hard_exit()` makes `exit()` skip it.
"""

import _thread
import os
import signal
import sys
import threading
import time

from spml_tf.core import quiet

GRACE_SECONDS = 10.0
# What a stopped command says after "stopped by SIGTERM": a run's checkpoints and a conversion's shards are whole.
RESUME_HINT = "what was saved stays: run the same command to continue"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_hard_exit = False


class Stopped(Exception):
    """The process was asked to stop by a signal."""

    def __init__(self, signum):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def install(program):
    """Routes SIGINT / SIGTERM to `Stopped` in the main thread; call it before importing TensorFlow."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # inherited by every thread started from now on

    def raise_stopped(signum, frame):
        del frame
        raise Stopped(signum)

    for signum in SIGNALS:
        signal.signal(signum, raise_stopped)
    threading.Thread(target=_wait_for_signals, args=(program,), daemon=True, name="spml-signals").start()


def _wait_for_signals(program):
    signum = signal.sigwait(SIGNALS)
    _thread.interrupt_main(signum)  # runs raise_stopped in the main thread at its next Python instruction
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        # A second signal within the grace period: stop at once.
        if signal.sigtimedwait(SIGNALS, max(deadline - time.monotonic(), 0.01)) is not None:
            break
    print(f"{program}: {Stopped(signum)}; {RESUME_HINT}", file=sys.stderr, flush=True)
    _exit_now(128 + signum)


def require_hard_exit():
    """From now on `exit()` skips the interpreter's shutdown (the multi-worker runtime cannot shut down alone)."""
    global _hard_exit
    _hard_exit = True


def exit(code):  # noqa: A001  (the process's exit, as sys.exit)
    if _hard_exit:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    quiet.drain()  # the filtered lines still in the pipe, passed on
    os._exit(code)
