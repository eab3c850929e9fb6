"""Scoring a model on a split, and the callbacks that report validation mAP each epoch."""

import numpy as np
import keras

from spml_tf import metrics


def predict_probabilities(model, dataset, order):
    """Sigmoid scores of every example of an eval dataset, rows in example-index order."""
    logits = model.predict(dataset, verbose=0)
    if len(logits) != len(order):
        raise RuntimeError(f"prediction returned {len(logits)} rows for {len(order)} examples")
    probs = np.empty(logits.shape, dtype=np.float32)
    probs[order] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return probs


class ValidationMAP(keras.callbacks.Callback):
    """Adds `val_map` (mAP in percent on the validation split) to the logs after every epoch."""

    def __init__(self, classifier, dataset, order, labels):
        super().__init__()
        self.classifier = classifier  # the image -> logits model (ROLE trains a wider one)
        self.dataset = dataset
        self.order = order
        self.labels = labels

    def on_epoch_end(self, epoch, logs=None):
        probs = predict_probabilities(self.classifier, self.dataset, self.order)
        if logs is not None:
            logs["val_map"] = metrics.mean_average_precision(self.labels, probs)


class EpochSummary(keras.callbacks.Callback):
    """Keeps one record per epoch (every number in the logs) and prints a one-line summary."""

    def __init__(self, num_epochs, log=print):
        super().__init__()
        self.num_epochs = num_epochs
        self.log = log
        self.records = []

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
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
