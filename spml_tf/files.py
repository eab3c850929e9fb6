"""Writing a file so that no reader, and no kill, ever sees half of it: on any filesystem TensorFlow can write.

`replace(path, save)` has `save` write a temporary file beside `path` and
renames it over `path` when complete, so `path` always holds the old
content or the new, whole. If `save` fails (a full disk, a file-size limit),
the temporary file is removed and the error goes on. Everything goes through
`tf.io.gfile`, so a path may be local, `gs://...`, or TensorFlow's `ram://`.
"""

import io
import json
import os
import posixpath

import numpy as np
import tensorflow as tf


def temporary_path(path):
    """`<dir>/<name>-partial.<extensions>`: beside `path`, keeping its extensions (Keras checks them)."""
    directory, base = posixpath.split(path) if "://" in path else os.path.split(path)
    name, dot, extensions = base.partition(".")
    return join(directory, f"{name}-partial{dot}{extensions}")


def join(directory, name):
    return f"{directory.rstrip('/')}/{name}" if "://" in directory else os.path.join(directory, name)


def replace(path, save):
    """save(temporary path), then rename it over `path`; the temporary file is removed if `save` fails."""
    temporary = temporary_path(path)
    try:
        save(temporary)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise


def write_text(path, text):
    def save(temporary):
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text)

    replace(path, save)


def write_json(path, data, indent=2):
    write_text(path, json.dumps(data, indent=indent, default=_to_builtin))


def save_npy(path, array):
    """np.save, atomically and through gfile (np.save alone writes local files only)."""
    def save(temporary):
        with tf.io.gfile.GFile(temporary, "wb") as f:
            np.save(f, np.asarray(array))

    replace(path, save)


def load_npy(path):
    """np.load of a plain array through gfile; never unpickles (allow_pickle stays False)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def read_json(path):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
