"""TensorFlow's own log lines kept off a command's output (they come back with --verbose).

TensorFlow's C++ code writes its log lines (oneDNN, "Could not find cuda drivers", cuInit, cpu_feature_guard,
...) straight to file descriptor 2 before TF_CPP_MIN_LOG_LEVEL is read, so no setting silences them. `install()`
puts a pipe in place of descriptor 2 and a thread that passes on every line but those (`NOISE`); Python's
sys.stderr (tracebacks, our error lines) and faulthandler's dumps go to the terminal directly. Fatal (F) lines of
TensorFlow are passed on: they say why a process died. Python loggers and warnings of TensorFlow, Keras, absl
and matplotlib are set to errors only.
"""

import atexit
import faulthandler
import io
import logging
import os
import re
import sys
import threading
import warnings

# A C++ log line of TensorFlow or absl (I: info, W: warning, E: error; F: fatal is kept), and the lines without
# that prefix they print.
NOISE = re.compile(rb"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
                   rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                   rb"|To enable the following instructions:)")
_state = {}


def install(verbose=False):
    """From now on descriptor 2 is filtered (unless `verbose`); Python and library loggers say errors only."""
    if verbose or _state:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl", "keras", "h5py", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|tf_keras|absl|google\.protobuf)(\.|$)")
    try:
        real = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to filter
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w", closefd=False), line_buffering=True,
                                  errors="backslashreplace")
    faulthandler.enable(file=sys.stderr)
    thread = threading.Thread(target=_pass_on, args=(read_end, real), daemon=True, name="spml-stderr")
    thread.start()
    _state.update(real=real, thread=thread)
    atexit.register(drain)


def drain():
    """Descriptor 2 back to the terminal, and every line written before passed on (at exit, and before
    os._exit)."""
    if not _state or "drained" in _state:
        return
    _state["drained"] = True
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_state["real"], 2)  # the pipe's last writer is gone: the thread reads to its end, then stops
    _state["thread"].join(timeout=2.0)


def _pass_on(read_end, real):
    pending = b""
    with open(read_end, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            _write(real, [line for line in lines if not NOISE.match(line)])
    if pending and not NOISE.match(pending):
        _write(real, [pending])


def _write(real, lines):
    if lines:
        try:
            os.write(real, b"".join(line + b"\n" for line in lines))
        except OSError:
            pass
