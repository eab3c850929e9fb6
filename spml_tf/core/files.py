"""Writing a file so that no reader, and no kill, ever sees half of it: on any filesystem TensorFlow can write.

`replace(path, save)` has `save` write a temporary file beside `path` and
renames it over `path` when complete, so `path` always holds the old
content or the new, whole. If `save` fails (a full disk, a file-size limit),
the temporary file is removed and the error goes on. Everything goes through
`tf.io.gfile`, so a path may be local, `gs://...`, or TensorFlow's `ram://`.
"""

import gc
import io
import json
import os
import posixpath
import sys

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


def release_failed_write(error):
    """Frees, now and quietly, what a failed write still holds through `error`: on a full disk each of h5py's
    dangling file handles prints a traceback and "Exception ignored ..." when it is collected, after the one line
    that said what happened. The HDF5 library can still crash in the interpreter's shutdown after such a failure
    (a segmentation fault, seen on a full tmpfs), so the command's exit then skips it (stopping.require_hard_exit)."""
    from spml_tf.core import stopping

    stopping.require_hard_exit()
    hook, stderr = sys.unraisablehook, sys.stderr
    sys.unraisablehook, sys.stderr = (lambda unraisable: None), io.StringIO()
    try:
        seen = set()
        while error is not None and id(error) not in seen:  # the error, and those it was raised while handling
            seen.add(id(error))
            tb = error.__traceback__
            while tb is not None:
                frame = tb.tb_frame
                while frame is not None:  # the failed calls' frames, also those a filtered traceback left out
                    try:
                        frame.clear()
                    except RuntimeError:  # still running: this function's callers
                        pass
                    frame = frame.f_back
                tb = tb.tb_next
            error = error.__context__ or error.__cause__
        gc.collect()
    finally:
        sys.unraisablehook, sys.stderr = hook, stderr


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


def load_npy(path, shape=None):
    """The plain array of a .npy file through gfile (of `shape` when given); ValueError if it is anything else.

    Never unpickles, and never allocates what the file does not hold: its header's shape and type are checked
    against the bytes present (and `shape`) before the array is made.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        return read_npy(f.read(), shape)


def read_npy(data, shape=None):
    """The array in the .npy bytes `data`, once its header is known to describe exactly those bytes."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise ValueError(f"an unknown .npy version {version}")
        declared, _, dtype = header[version](stream)
    except (ValueError, SyntaxError, TypeError, EOFError) as error:
        raise ValueError(f"not a .npy array ({error})") from None
    if dtype.hasobject:
        raise ValueError("it holds Python objects, not numbers")
    if shape is not None and tuple(declared) != tuple(shape):
        raise ValueError(f"it holds an array of shape {tuple(declared)}, not {tuple(shape)}")
    present = len(data) - stream.tell()
    if int(np.prod(declared, dtype=object)) * dtype.itemsize != present:
        raise ValueError(f"its header declares {tuple(declared)} {dtype} but {present:,} bytes follow")
    stream.seek(0)
    return np.load(stream, allow_pickle=False)


def read_npz(data, shapes):
    """The arrays arr_0, arr_1, ... of the .npz bytes `data` (np.savez's), each of the shape in `shapes`."""
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"not a .npz archive ({error})") from None
    names = [info.filename for info in infos]
    if names != [f"arr_{i}.npy" for i in range(len(shapes))]:
        raise ValueError(f"it holds {len(names)} members, not arr_0.npy .. arr_{len(shapes) - 1}.npy")
    arrays = []
    for info, shape in zip(infos, shapes):
        # np.savez stores members uncompressed: their size is then bounded by the archive's.
        if (info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size
                or info.file_size > len(data)):
            raise ValueError(f"{info.filename} is compressed or larger than the archive")
        try:
            member = archive.read(info)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise ValueError(f"{info.filename} does not read ({error})") from None
        try:
            arrays.append(read_npy(member, shape))
        except ValueError as error:
            raise ValueError(f"{info.filename}: {error}") from None
    return arrays


def read_json(path):
    """The JSON in `path`; ValueError if it is not JSON (undecodable text or nesting too deep included) or not a
    readable file (a directory, no permission); tf.errors.NotFoundError if it does not exist."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.FailedPreconditionError, tf.errors.PermissionDeniedError, tf.errors.UnimplementedError) as error:
        raise ValueError(f"{path} cannot be read: {error.message.splitlines()[0]}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
