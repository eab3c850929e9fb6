"""What a killed run needs to continue, saved after every epoch so that no moment of a kill can spoil it.

A checkpoint is a directory `<model_dir>/checkpoint/epoch-NNNN/` holding the
training model's weights with the optimizer state, the label bank (APL's
pseudo-labels), and the state of every stateful callback: each callback with
a `state_key` gives `get_state()` (JSON: history, APL's rounds and counts,
early stopping's counters) and, if it has large arrays, `get_arrays()` (early
stopping's best weights, saved as `<state_key>.npz`); `set_state` /
`set_arrays` put them back on resume. A new stateful callback is one more
entry of the mapping the trainer hands `Checkpointing`.

Every file is written whole (files.py) and `checkpoint/LATEST`, written last
and atomically, names the checkpoint; older ones are deleted after that. So
whenever the process dies, LATEST names a complete checkpoint or none. No
directory is renamed, so this works on any filesystem TensorFlow writes
(local, gs://, ram://).

(Keras's BackupAndRestore writes its weights file and its epoch file one
after the other, in place: a kill between or during the two leaves them
disagreeing or half written, and it knows nothing of our label bank.)
"""

import io
import re

import keras
import numpy as np
import tensorflow as tf

from spml_tf.core import files, schema
from spml_tf.training import label_bank, run_dir
from spml_tf.core.errors import DataError, TrainingError, UsageError, reason

DIRECTORY = run_dir.CHECKPOINT
LATEST = "LATEST"
STATE = "state.json"
WEIGHTS = "trainer.weights.h5"
BANK = "label_bank.npy"
# What may change between a run and its resumption (a resumed run may have lost a GPU); the rest must match.
MAY_DIFFER = ("model_dir", "data_dir", "vl_scores", "strategy", "jit_compile", "worker_timeout")  # where and how fast, not what


def identity(config, class_names, train_manifest=None):
    """What a checkpoint must match to be resumed: the config (bar paths), the classes and the training data
    (its size and the fingerprint of its conversion: --data_dir may move, the data may not change)."""
    fields = {key: list(value) if isinstance(value, tuple) else value  # as state.json gives them back
              for key, value in vars(config).items() if key not in MAY_DIFFER}
    found = {"config": fields, "class_names": list(class_names)}
    if train_manifest is not None:
        found["data"] = {"train_examples": train_manifest.num_examples, "fingerprint": train_manifest.fingerprint}
    return found


# state.json as `write` makes it; each callback's own state is checked against its state_schema() on resume.
_STATE = schema.Record({
    "epoch": schema.Integer(0),
    "stop_training": schema.Boolean(),
    "identity": schema.Record({"config": schema.MapOf(schema.Anything()), "class_names": schema.ListOf(schema.Text())},
                              optional={"data": schema.Record({"train_examples": schema.Integer(0),
                                                               "fingerprint": schema.Text()})}),
    "callbacks": schema.MapOf(schema.Anything()),
})


class Saved:
    """A complete checkpoint on disk (DataError naming the fix if it is damaged)."""

    def __init__(self, path):
        self.path = path
        self.array_files = {}  # state key -> file of its arrays, where not <state key>.npz
        try:
            self.state = self._upgrade(schema.check(files.read_json(files.join(path, STATE)), schema.Anything()))
            schema.check(self.state, _STATE, STATE)
        except tf.errors.NotFoundError:
            raise self.damaged(f"{STATE} is missing") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise self.damaged(f"{STATE} is not what a checkpoint writes ({error})") from None
        named = int(re.fullmatch(r"epoch-(\d+)", path.rstrip("/").rsplit("/", 1)[-1])[1])
        if self.state["epoch"] != named:
            raise self.damaged(f"{STATE} says epoch {self.state['epoch']}, its folder's name epoch {named}")
        for name in (WEIGHTS, BANK):
            if not tf.io.gfile.exists(files.join(path, name)):
                raise self.damaged(f"{name} is missing")

    @property
    def epoch(self):
        """Epochs completed."""
        return self.state["epoch"]

    @property
    def finished(self):
        """True when early stopping ended the run: nothing is left to train."""
        return self.state["stop_training"]

    def check_matches(self, expected):
        """UsageError listing what differs when this checkpoint is of another run (other settings, classes or
        training data); DataError when its epoch counter lies outside the run's epochs."""
        saved = self.state["identity"]
        differences = [f"--{key}={saved['config'].get(key)!r} there, {value!r} now"
                       for key, value in expected["config"].items() if saved["config"].get(key) != value]
        if saved["class_names"] != expected["class_names"]:
            differences.append(f"{len(saved['class_names'])} classes there, {len(expected['class_names'])} now")
        if differences:
            raise UsageError(f"{_model_dir(self.path)} holds a checkpoint of a different run "
                             f"({'; '.join(differences)}). Resume it with its own settings, or pass another "
                             "--model_dir.")
        data, expected_data = saved.get("data"), expected.get("data")
        if data is not None and expected_data is not None and data != expected_data:
            size = (f"{data['train_examples']:,} training images there, {expected_data['train_examples']:,} now"
                    if data["train_examples"] != expected_data["train_examples"] else "converted from other inputs")
            raise UsageError(f"{_model_dir(self.path)} holds a checkpoint trained on other data ({size}). Resume it "
                             "with the --data_dir it was trained on, or pass another --model_dir.")
        epochs = expected["config"]["epochs"]
        if not 0 <= self.epoch <= epochs:
            raise self.damaged(f"{STATE} says {self.epoch} epochs are done, outside 0..--epochs={epochs}")

    def check_callbacks(self, stateful, model):
        """Checks every stateful callback's saved state against its state_schema() and its arrays against the
        model's weights, before anything is restored (DataError naming the first that does not fit)."""
        self._checked_arrays = {}
        for key, callback in stateful.items():
            if key not in self.state["callbacks"]:
                raise self.damaged(f"{STATE} has no state for {key!r}")
            try:
                schema.check(self.state["callbacks"][key], callback.state_schema(self.epoch), f"callbacks.{key}")
            except schema.SchemaError as error:
                raise self.damaged(f"the state in {STATE} does not fit ({error})") from None
            if hasattr(callback, "set_arrays"):
                self._checked_arrays[key] = self._arrays(key, model.weights)

    def damaged(self, problem):
        """The DataError for a checkpoint that cannot be used, with the two ways on."""
        return damaged_error(_model_dir(self.path), f"{self.path}: {problem}")

    def restore_model(self, trainer, bank):
        """Weights, optimizer state and label bank, before `fit`; everything is checked before anything is set."""
        try:
            labels = files.load_npy(files.join(self.path, BANK), tuple(bank.shape))
        except (ValueError, OSError, EOFError, tf.errors.OpError) as error:
            raise self.damaged(f"{BANK} is not the training set's label matrix ({reason(error)})") from None
        try:
            label_bank.check_encoding(labels, BANK)
        except DataError as error:
            raise self.damaged(str(error)) from None
        if trainer.optimizer is not None and not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)  # its slots must exist to be loaded into
        try:
            trainer.load_weights(files.join(self.path, WEIGHTS))
        except (OSError, ValueError, KeyError) as error:
            raise self.damaged(f"{WEIGHTS} does not load ({reason(error)})") from None
        bank.assign(labels)

    def restore_callback(self, callback):
        """Puts a stateful callback's saved state (and arrays) back, once check_callbacks found them sound."""
        key = callback.state_key
        callback.set_state(self.state["callbacks"][key])
        if hasattr(callback, "set_arrays"):
            callback.set_arrays(self._checked_arrays[key])

    def _arrays(self, key, weights):
        """The arrays saved for `key` (None if there are none), each of its weight's shape and a float type."""
        name = self.array_files.get(key, f"{key}.npz")
        path = files.join(self.path, name)
        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                arrays = files.read_npz(f.read(), [tuple(weight.shape) for weight in weights])  # no pickles
        except (ValueError, tf.errors.OpError) as error:
            raise self.damaged(f"{name} is not the arrays this run saves ({reason(error)})") from None
        floats = [i for i, array in enumerate(arrays) if array.dtype.kind != "f" or not np.isfinite(array).all()]
        if floats:
            raise self.damaged(f"{name}: array {floats[0]} is not finite floating-point weights")
        return arrays

    def _upgrade(self, state):
        """A state.json written before the callback protocol (history, apl and early_stopping at its top, the best
        weights in best_weights.npz), in today's layout, so that such a run resumes too."""
        if "callbacks" in state or "history" not in state:
            return state
        callbacks = {"history": {"records": state.pop("history")}, "early_stopping": state.pop("early_stopping")}
        apl = state.pop("apl", None)
        if apl is not None:
            callbacks["apl"] = apl
        self.array_files["early_stopping"] = "best_weights.npz"
        return {**state, "callbacks": callbacks}


def _model_dir(checkpoint_path):
    return checkpoint_path.rstrip("/").rsplit("/", 2)[0]


def damaged_error(model_dir, problem):
    checkpoint_dir = files.join(model_dir, DIRECTORY)
    return DataError(f"the checkpoint is damaged ({problem}); nothing was loaded. Remove {checkpoint_dir} to start "
                     "this run over, or pass another --model_dir")


def latest(model_dir):
    """The newest complete checkpoint under model_dir, or None; DataError if it is damaged."""
    pointer = files.join(files.join(model_dir, DIRECTORY), LATEST)
    if not tf.io.gfile.exists(pointer):
        return None
    try:
        with tf.io.gfile.GFile(pointer, "r") as f:
            name = f.read().strip()
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        raise damaged_error(model_dir, f"{pointer} does not read: {reason(error)}") from None
    if not name.startswith("epoch-") or "/" in name or name in (".", ".."):
        raise damaged_error(model_dir, f"{pointer} names {name!r}, not a checkpoint of this directory")
    path = files.join(files.join(model_dir, DIRECTORY), name)
    if not tf.io.gfile.isdir(path):
        raise damaged_error(model_dir, f"{pointer} names {name}, which is missing")
    return Saved(path)


def write(model_dir, epoch, trainer, bank, state, arrays):
    """Writes the checkpoint of `epoch` completed epochs and points LATEST at it.

    `state` is {callback state key: JSON state}, `arrays` {state key: list of
    arrays}. TrainingError if the disk refuses (full, a file-size limit): the
    partial checkpoint is removed and the previous one stays in charge.
    """
    root = files.join(model_dir, DIRECTORY)
    name = f"epoch-{epoch:04d}"
    path = files.join(root, name)
    if tf.io.gfile.exists(path):  # left by a run killed while writing it, or before LATEST moved
        tf.io.gfile.rmtree(path)
    try:
        tf.io.gfile.makedirs(path)
        trainer.save_weights(files.join(path, WEIGHTS))
        files.save_npy(files.join(path, BANK), bank.numpy())
        for key, key_arrays in arrays.items():
            if key_arrays is not None:
                files.replace(files.join(path, f"{key}.npz"), lambda temporary, a=key_arrays: _savez(temporary, a))
        files.write_json(files.join(path, STATE), {**state, "epoch": epoch}, indent=None)
    except (OSError, tf.errors.OpError) as error:
        files.release_failed_write(error)
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
        previous = latest(model_dir)
        kept = (f"the checkpoint after epoch {previous.epoch} is kept" if previous
                else "no earlier checkpoint exists")
        raise TrainingError(f"could not write the checkpoint of epoch {epoch} in {root} "
                            f"({reason(error)}); {kept}. Free space (or raise the "
                            "file-size limit) and run the same command to resume") from None
    files.write_text(files.join(root, LATEST), name + "\n")
    for other in tf.io.gfile.listdir(root):
        other = other.rstrip("/")
        if other.startswith("epoch-") and other != name:
            tf.io.gfile.rmtree(files.join(root, other))


def _savez(path, arrays):
    buffer = io.BytesIO()  # np.savez seeks in its file, which a gfile being written cannot do
    np.savez(buffer, *arrays)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


class Checkpointing(keras.callbacks.Callback):
    """Writes a checkpoint after every epoch and, on a resumed run, puts the callbacks' saved state back.

    `stateful` maps state keys to the callbacks whose state survives a kill.
    Must come last among the callbacks: it records what the others did in the
    epoch, and its on_train_begin runs after theirs (EarlyStopping resets its
    counters there).
    """

    def __init__(self, model_dir, bank, run_identity, stateful, resumed=None):
        super().__init__()
        self.model_dir, self.bank, self.run_identity = model_dir, bank, run_identity
        self.stateful = stateful
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        if self.resumed is None:
            return
        for callback in self.stateful.values():
            self.resumed.restore_callback(callback)

    def on_epoch_end(self, epoch, logs=None):
        state = {"identity": self.run_identity, "stop_training": bool(self.model.stop_training),
                 "callbacks": {key: callback.get_state() for key, callback in self.stateful.items()}}
        arrays = {key: callback.get_arrays() for key, callback in self.stateful.items()
                  if hasattr(callback, "get_arrays")}
        write(self.model_dir, epoch + 1, self.model, self.bank, state, arrays)


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the epoch and step; the last checkpoint stays as it was."""

    def __init__(self, model_dir):
        super().__init__()
        self.model_dir = model_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            saved = latest(self.model_dir)
            kept = (f"the checkpoint after epoch {saved.epoch} is kept in {saved.path}" if saved
                    else "no epoch had finished, so there is no checkpoint")
            raise TrainingError(
                f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; training stopped and "
                f"{kept}. A lower --learning_rate usually helps."
            )
