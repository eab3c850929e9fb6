"""What a killed run needs to continue, saved after every epoch so that no moment of a kill can spoil it.

A checkpoint is a directory `<model_dir>/checkpoint/epoch-NNNN/` holding the
training model's weights with the optimizer state, the label bank (APL's
pseudo-labels), the best weights so far (early stopping returns to them) and
the state of every callback that has one (history, APL rounds and counts,
early stopping's counters). It is written under a temporary name, renamed
when complete, and only then named in `checkpoint/LATEST` (itself replaced
atomically); older ones are deleted after that. So whenever the process dies,
LATEST names a complete checkpoint or none.

(Keras's BackupAndRestore writes its weights file and its epoch file one
after the other, in place: a kill between or during the two leaves them
disagreeing or half written, and it knows nothing of our label bank.)
"""

import json
import os
import shutil

import keras
import numpy as np

from spml_tf import label_bank, run_dir
from spml_tf.errors import DataError, TrainingError, UsageError, reason

DIRECTORY = run_dir.CHECKPOINT
LATEST = "LATEST"
STATE = "state.json"
WEIGHTS = "trainer.weights.h5"
BANK = "label_bank.npy"
BEST_WEIGHTS = "best_weights.npz"
# What may change between a run and its resumption (a resumed run may have lost a GPU); the rest must match.
MAY_DIFFER = ("model_dir", "data_dir", "strategy", "jit_compile", "worker_timeout")  # where and how fast, not what


def identity(config, class_names):
    """What a checkpoint must match to be resumed: the config (bar paths) and the classes."""
    fields = {key: value for key, value in vars(config).items() if key not in MAY_DIFFER}
    return {"config": fields, "class_names": list(class_names)}


class Saved:
    """A complete checkpoint on disk (DataError naming the fix if it is damaged)."""

    def __init__(self, path):
        self.path = path
        state_path = os.path.join(path, STATE)
        try:
            with open(state_path) as f:
                self.state = json.load(f)
            for key, kind in (("epoch", int), ("stop_training", bool), ("identity", dict), ("history", list),
                              ("early_stopping", dict)):
                if not isinstance(self.state[key], kind):
                    raise TypeError(f"{key!r} is not a {kind.__name__}")
        except FileNotFoundError:
            raise self.damaged(f"{STATE} is missing") from None
        except (ValueError, KeyError, TypeError) as error:
            raise self.damaged(f"{STATE} is not what a checkpoint writes ({error})") from None
        for name in (WEIGHTS, BANK):
            if not os.path.isfile(os.path.join(path, name)):
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
        """UsageError listing what differs when this checkpoint is of another run."""
        saved = self.state["identity"]
        if saved == expected:
            return
        differences = [f"--{key}={saved['config'].get(key)!r} there, {value!r} now"
                       for key, value in expected["config"].items() if saved["config"].get(key) != value]
        if saved["class_names"] != expected["class_names"]:
            differences.append(f"{len(saved['class_names'])} classes there, {len(expected['class_names'])} now")
        raise UsageError(
            f"{os.path.dirname(os.path.dirname(self.path))} holds a checkpoint of a different run "
            f"({'; '.join(differences)}). Resume it with its own settings, or pass another --model_dir."
        )

    def damaged(self, problem):
        """The DataError for a checkpoint that cannot be used, with the two ways on."""
        return damaged_error(os.path.dirname(os.path.dirname(self.path)), f"{self.path}: {problem}")

    def restore_model(self, trainer, bank):
        """Weights, optimizer state and label bank, before `fit`; everything is checked before anything is set."""
        try:
            labels = np.load(os.path.join(self.path, BANK))  # allow_pickle stays False
        except (ValueError, OSError, EOFError) as error:
            raise self.damaged(f"{BANK} is not a plain array ({error})") from None
        if labels.shape != bank.shape:
            raise self.damaged(f"{BANK} has shape {labels.shape}, the training set's labels {bank.shape}")
        try:
            label_bank.check_encoding(labels, BANK)
        except DataError as error:
            raise self.damaged(str(error)) from None
        if trainer.optimizer is not None and not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)  # its slots must exist to be loaded into
        try:
            trainer.load_weights(os.path.join(self.path, WEIGHTS))
        except (OSError, ValueError, KeyError) as error:
            raise self.damaged(f"{WEIGHTS} does not load ({reason(error)})") from None
        bank.assign(labels)

    def best_weights(self, expected_shapes):
        """Early stopping's best weights so far (None before it has any), checked against the model's shapes."""
        path = os.path.join(self.path, BEST_WEIGHTS)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path) as arrays:  # allow_pickle stays False
                weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        except (ValueError, OSError, KeyError, EOFError) as error:
            raise self.damaged(f"{BEST_WEIGHTS} is not a plain array archive ({error})") from None
        shapes = [tuple(weight.shape) for weight in weights]
        if shapes != [tuple(shape) for shape in expected_shapes]:
            raise self.damaged(f"{BEST_WEIGHTS} holds {len(shapes)} arrays that do not fit the model's "
                               f"{len(expected_shapes)} weights")
        return weights


def damaged_error(model_dir, problem):
    checkpoint_dir = os.path.join(model_dir, DIRECTORY)
    return DataError(f"the checkpoint is damaged ({problem}); nothing was loaded. Remove {checkpoint_dir} to start "
                     "this run over, or pass another --model_dir")


def latest(model_dir):
    """The newest complete checkpoint under model_dir, or None; DataError if it is damaged."""
    pointer = os.path.join(model_dir, DIRECTORY, LATEST)
    if not os.path.exists(pointer):
        return None
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise damaged_error(model_dir, f"{pointer} does not read: {error}") from None
    if not name.startswith("epoch-") or os.path.basename(name) != name:
        raise damaged_error(model_dir, f"{pointer} names {name!r}, not a checkpoint of this directory")
    path = os.path.join(model_dir, DIRECTORY, name)
    if not os.path.isdir(path):
        raise damaged_error(model_dir, f"{pointer} names {name}, which is missing")
    return Saved(path)


def write(model_dir, epoch, trainer, bank, best_weights, state):
    """Writes the checkpoint of `epoch` completed epochs and points LATEST at it.

    TrainingError if the disk refuses (full, a file-size limit): the partial
    checkpoint is removed and the previous one stays in charge.
    """
    root = os.path.join(model_dir, DIRECTORY)
    name = f"epoch-{epoch:04d}"
    final, temporary = os.path.join(root, name), os.path.join(root, name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        os.makedirs(temporary)
        trainer.save_weights(os.path.join(temporary, WEIGHTS))
        np.save(os.path.join(temporary, BANK), bank.numpy())
        if best_weights is not None:
            np.savez(os.path.join(temporary, BEST_WEIGHTS), *best_weights)
        with open(os.path.join(temporary, STATE), "w") as f:
            json.dump({**state, "epoch": epoch}, f)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        previous = latest(model_dir)
        kept = (f"the checkpoint after epoch {previous.epoch} is kept" if previous
                else "no earlier checkpoint exists")
        raise TrainingError(f"could not write the checkpoint of epoch {epoch} in {root} "
                            f"({reason(error)}); {kept}. Free space (or raise the "
                            "file-size limit) and run the same command to resume") from None
    shutil.rmtree(final, ignore_errors=True)  # left by a run killed after this rename, before LATEST moved
    os.replace(temporary, final)
    pointer = os.path.join(root, LATEST)
    with open(pointer + ".tmp", "w") as f:
        f.write(name + "\n")
    os.replace(pointer + ".tmp", pointer)
    for other in os.listdir(root):
        if other.startswith("epoch-") and other != name:
            shutil.rmtree(os.path.join(root, other), ignore_errors=True)


class Checkpointing(keras.callbacks.Callback):
    """Writes a checkpoint after every epoch and, on a resumed run, puts the callbacks' saved state back.

    Must come last among the callbacks: it records what the others did in the
    epoch, and its on_train_begin runs after theirs (EarlyStopping resets its
    counters there).
    """

    def __init__(self, model_dir, bank, run_identity, summary, apl, early_stopping, resumed=None):
        super().__init__()
        self.model_dir, self.bank, self.run_identity = model_dir, bank, run_identity
        self.summary, self.apl, self.early_stopping = summary, apl, early_stopping
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        if self.resumed is None:
            return
        state = self.resumed.state
        self.summary.records = state["history"]
        if self.apl is not None:
            self.apl.set_state(state["apl"])
        stopping = state["early_stopping"]
        self.early_stopping.wait = stopping["wait"]
        self.early_stopping.best = stopping["best"]
        self.early_stopping.best_epoch = stopping["best_epoch"]
        self.early_stopping.best_weights = self.resumed.best_weights(
            [weight.shape for weight in self.model.weights])

    def on_epoch_end(self, epoch, logs=None):
        stopping = self.early_stopping
        state = {
            "identity": self.run_identity,
            "stop_training": bool(self.model.stop_training),
            "history": self.summary.records,
            "apl": self.apl.get_state() if self.apl is not None else None,
            "early_stopping": {"wait": stopping.wait, "best_epoch": stopping.best_epoch,
                               "best": None if stopping.best is None else float(stopping.best)},
        }
        write(self.model_dir, epoch + 1, self.model, self.bank, stopping.best_weights, state)


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
