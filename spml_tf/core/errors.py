"""The kinds of error a user can act on, the exit code each maps to, and the one line that shows one."""

import difflib
import re


class UsageError(Exception):
    """A flag, a config value or a path the user gave is wrong (exit code 2)."""

    exit_code = 2


class DataError(Exception):
    """The data on disk is missing, corrupt or inconsistent (exit code 1)."""

    exit_code = 1


class TrainingError(Exception):
    """Training itself failed (the loss diverged); what was saved before stays (exit code 1)."""

    exit_code = 1


def reason(error):
    """The one line of an exception worth showing a user.

    For an OSError its strerror ("No space left on device"), also when HDF5
    buried it in a longer text. For a TensorFlow
    OpError, the line that says what failed, without the graph-location lines
    ("Detected at node ...", "File ...") and internal tags ({{function_node ...}},
    [[...]], [Op:...]) that TensorFlow wraps it in.
    """
    text = getattr(error, "message", None) or str(error)
    hdf5 = re.search(r"error message = '([^']*)'", text)  # h5py's OSError buries the system's words in its text
    if hdf5:
        return hdf5[1]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    for line in text.splitlines():
        line = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]|\s+name:\s*$", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "File ")):
            return line
    return type(error).__name__


def did_you_mean(value, known):
    """ "; did you mean 'voc'?" when one of the `known` names is close to `value`, else ""."""
    close = difflib.get_close_matches(str(value).lower(), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
