"""Scoring a model on a split, and the callbacks that report validation mAP each epoch."""

import numpy as np
import keras

from spml_tf.core import schema
from spml_tf.training import metrics


class Predictor:
    """A model's probabilities for every example of an eval dataset, as rows in example-index order.

    The example index travels through `predict` beside each image, so every
    row lands where it belongs in whatever order a distribution strategy
    returns them, and an example missing or predicted twice (sharding, a
    partial last batch) is an error rather than a silent shift. Create it in
    the strategy's scope: `predict` then runs on every replica.
    """

    def __init__(self, model):
        image = keras.Input(model.input_shape[1:], name="image")
        index = keras.Input((), dtype="int64", name="index")
        self.model = keras.Model([image, index], [model(image), keras.layers.Identity()(index)])

    def probabilities(self, dataset, num_examples):
        """(image, index) batches in, N x C sigmoid scores out (float32, float64 sigmoid)."""
        logits, indices = self.model.predict(dataset.map(lambda image, index: ((image, index),)), verbose=0)
        counts = np.bincount(indices, minlength=num_examples)
        if len(counts) != num_examples or (counts != 1).any():
            raise RuntimeError(f"prediction returned {len(indices)} rows that do not cover examples "
                               f"0..{num_examples - 1} exactly once")
        probs = np.empty(logits.shape, dtype=np.float32)
        probs[indices] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return probs


class ValidationMAP(keras.callbacks.Callback):
    """Adds `val_map` (mAP in percent on the validation split) to the logs after every epoch."""

    def __init__(self, predictor, dataset, labels):
        super().__init__()
        self.predictor = predictor  # of the image -> logits model (ROLE trains a wider one)
        self.dataset = dataset
        self.labels = labels

    def on_epoch_end(self, epoch, logs=None):
        probs = self.predictor.probabilities(self.dataset, len(self.labels))
        if logs is not None:
            logs["val_map"] = metrics.mean_average_precision(self.labels, probs)


class EpochSummary(keras.callbacks.Callback):
    """Keeps one record per epoch (every number in the logs) and prints a one-line summary."""

    state_key = "history"

    def __init__(self, num_epochs, log=print):
        super().__init__()
        self.num_epochs = num_epochs
        self.log = log
        self.records = []

    def get_state(self):
        return {"records": self.records}

    def state_schema(self, epochs_done):
        """One record per epoch done: its number, its val_map and any other number the logs held."""
        record = schema.Record({"epoch": schema.Integer(1, epochs_done), "val_map": schema.Number(0, 100)},
                               others=schema.Number())
        return schema.Record({"records": schema.ListOf(record, length=epochs_done)})

    def set_state(self, state):
        self.records = list(state["records"])

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{key: _number(key, value) for key, value in (logs or {}).items()}}
        self.records.append(record)
        best = max(self.records, key=lambda r: r.get("val_map", -1.0))
        line = f"epoch {epoch + 1}/{self.num_epochs}: loss {record.get('loss', float('nan')):.4f}"
        if "val_map" in record:
            line += f", val mAP {record['val_map']:.2f} (best {best['val_map']:.2f} at epoch {best['epoch']})"
        if "apl_new_pseudo_negatives" in record:
            line += f"; APL +{int(record['apl_new_pseudo_negatives']):,} pseudo-negatives"
            line += f" (total {int(record['apl_total_pseudo_negatives']):,})"
            if "apl_precision" in record:
                line += f", {record['apl_precision']:.2f}% true negatives"
        self.log(line)


def _number(key, value):
    """A log's value as JSON keeps it: counts (APL's pseudo-negatives) as ints, the rest as floats."""
    value = float(value)
    return int(value) if key.startswith("apl_") and key.endswith("_pseudo_negatives") and value.is_integer() else value


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping on validation mAP, whose counters and best weights survive a kill (the checkpoint
    saves `get_state()`: the best weights go beside it as arrays, see checkpoint.py)."""

    state_key = "early_stopping"

    def __init__(self, patience, max_map_drop=0.0):
        """Stops after `patience` epochs without improvement and, with `max_map_drop` > 0 (the rule of the LL, GR
        and AEVLP authors' code), also at the first epoch whose val mAP is more than `max_map_drop` below the best
        so far: whichever comes first (LL's and GR's protocols set a patience of their epochs: the drop alone)."""
        self.max_map_drop = float(max_map_drop)
        super().__init__(monitor="val_map", mode="max", patience=patience, restore_best_weights=True, verbose=0)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        current = (logs or {}).get("val_map")
        if self.max_map_drop > 0 and current is not None and self.best - current > self.max_map_drop:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def get_state(self):
        return {"wait": self.wait, "best_epoch": self.best_epoch,
                "best": None if self.best is None else float(self.best)}

    def state_schema(self, epochs_done):
        return schema.Record({"wait": schema.Integer(0, epochs_done),
                              "best_epoch": schema.Integer(0, max(epochs_done - 1, 0)),  # Keras counts from 0
                              "best": schema.Number(0, 100, nullable=True)})

    def set_state(self, state):
        self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]

    def get_arrays(self):
        return self.best_weights

    def set_arrays(self, arrays):
        self.best_weights = arrays
