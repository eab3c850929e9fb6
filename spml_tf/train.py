"""Builds and runs a training: data, model, loss over the label bank, callbacks, fit, test, save."""

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from spml_tf import (checkpoint, datasets, distribute, evaluation, losses, metrics, models, optimizers, pipeline,
                     pseudo_label, run_dir)
from spml_tf.errors import TrainingError, UsageError, reason
from spml_tf.label_bank import LabelBank
from spml_tf.run_dir import BEST_WEIGHTS, LABEL_BANK, MODEL_FILE, RESULTS


def make_optimizer(config):
    """The optimizer every run compiles with: Adam as torch computes it (the original code's), no weight decay."""
    return optimizers.TorchAdam(config.learning_rate)


def default_model_dir(config):
    """runs/<dataset>-<loss>-<time> in the directory the command was started from (also under `bazel run`)."""
    base = os.environ.get("BUILD_WORKING_DIRECTORY", "")
    return os.path.join(base, "runs", f"{config.dataset}-{config.loss}-{time.strftime('%Y%m%d-%H%M%S')}")


def train_and_evaluate(config, log=print, verbose=1):
    """Trains `config`, selects the epoch with the best validation mAP and returns the results dict.

    Writes results.json, the best weights, the final model and TensorBoard logs
    under config.model_dir (a fresh directory under runs/ when empty).
    """
    config = dataclasses.replace(config, model_dir=config.model_dir or default_model_dir(config))
    run_dir.check(config.model_dir)  # before any work: a file or a user's folder is refused at once
    placement = distribute.make_strategy(config.strategy, config.batch_size, config.worker_timeout, log)
    # Every worker of a multi-worker run trains the same model; the chief writes the run's files, the others
    # theirs (checkpoints included) under model_dir/workers/<index>.
    model_dir = config.model_dir if placement.is_chief else os.path.join(
        config.model_dir, run_dir.WORKERS, str(placement.worker_index))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:  # same results run after run, and a resumed run equal to an uninterrupted one
        tf.config.experimental.enable_op_determinism()
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32" if config.mixed_precision == "none" else config.mixed_precision)
    try:
        return _train_and_evaluate(config, placement, model_dir, log, verbose)
    except distribute.LOST_WORKER_ERRORS as error:
        if placement.num_workers == 1:
            raise
        raise placement.lost_worker(error) from None
    finally:
        keras.mixed_precision.set_global_policy(policy)  # the policy is global: leave it as it was


def _train_and_evaluate(config, placement, model_dir, log, verbose):
    """The body of train_and_evaluate, run under the chosen precision policy: data, model, fit, evaluate, save."""
    # Data: TFRecord splits -> tf.data; labels read once, images decoded per step.
    splits = datasets.load(config.dataset, config.data_dir, config.observed_negatives)
    config = _fit_to_known_labels(config, splits, log)
    if splits.train.resized_to and splits.train.resized_to != config.image_size:
        log(f"note: the images were resized to {splits.train.resized_to} at conversion; --image_size="
            f"{config.image_size} resizes them again")
    # The run directory is this run's until it ends (only once the data is known to be there).
    lock = run_dir.claim(model_dir)
    try:
        return _train_in(model_dir, config, placement, splits, log, verbose)
    finally:
        lock.release()


def _train_in(model_dir, config, placement, splits, log, verbose):
    """Trains in the locked `model_dir`: resume or start, fit, evaluate the best epoch, save."""
    train_labels = splits.labels("train")
    val_labels = splits.labels("val")
    test_labels = splits.labels("test") if splits.test else None
    # A run killed earlier in this model_dir continues from its last complete epoch.
    resumed = checkpoint.latest(model_dir)
    run_identity = checkpoint.identity(config, splits.class_names)
    if resumed:
        resumed.check_matches(run_identity)
    first_epoch = config.epochs if resumed and resumed.finished else (resumed.epoch if resumed else 0)
    size, batch = config.image_size, config.batch_size
    # Workers split one stream of batches between them, so each must see it in the same order.
    train_ds = pipeline.make_train_dataset(splits.train, size, batch, config.random_flip, config.seed,
                                           epochs=config.epochs, first_epoch=first_epoch,
                                           deterministic=config.deterministic or placement.num_workers > 1)
    train_eval_ds = pipeline.make_eval_dataset(splits.train, size, batch)
    val_ds = pipeline.make_eval_dataset(splits.val, size, batch)
    test_ds = pipeline.make_eval_dataset(splits.test, size, batch) if splits.test else None
    log(
        f"{config.dataset}: {splits.train.num_examples:,} train / {splits.val.num_examples:,} val / "
        + (f"{splits.test.num_examples:,} test images" if splits.test else "no test images")
        + f", {splits.train.num_classes} classes; loss {config.loss}; "
        + f"{placement.strategy.num_replicas_in_sync} replica(s), global batch {batch}"
    )

    # Model and loss, in the strategy's scope: the oracle trains on full labels, every other loss on observed
    # ones. The label bank is a variable of the scope too, so every replica reads the current labels.
    with placement.strategy.scope():
        model = models.build_model(config, splits.train.num_classes, log)
        clean = config.loss == "full" or config.train_set_variant == "clean"
        bank = LabelBank(train_labels.full if clean else train_labels.observed)
        trainer = model
        if config.loss == "role":  # ROLE also trains a label estimator, indexed by example
            trainer = models.with_label_estimator(model, train_labels.observed, config.seed)
            train_ds = pipeline.with_index_as_input(train_ds)
        trainer.compile(
            optimizer=make_optimizer(config),
            loss=losses.LabelBankLoss(losses.from_config(config), bank),
            jit_compile=config.jit_compile,
        )
        predictor = evaluation.Predictor(model)
        if resumed:
            resumed.restore_model(trainer, bank)
            log(f"Resuming {model_dir} after epoch {resumed.epoch}" + (" (early stopping had ended it)"
                                                                        if resumed.finished else ""))

    # Callbacks: validation mAP first (early stopping and checkpointing read it),
    # then APL, then the ones that only record, then the checkpoint of it all.
    summary = evaluation.EpochSummary(config.epochs, log=log)
    # Cole et al.'s "observed" variant selects on the single-positive val labels.
    val_targets = val_labels.full if config.val_set_variant == "clean" else np.maximum(val_labels.observed, 0)
    callbacks = [evaluation.ValidationMAP(predictor, val_ds, val_targets)]
    apl = None
    if config.loss == "em_apl":
        full_known = splits.train.full_labels_known
        apl = pseudo_label.APLCallback(predictor, bank, train_eval_ds, train_labels.full if full_known else None,
                                       config)
        callbacks.append(apl)
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_map", mode="max", patience=config.patience,
                                                   restore_best_weights=True, verbose=0)
    callbacks += [
        checkpoint.StopOnNaN(model_dir),
        early_stopping,
        keras.callbacks.TensorBoard(os.path.join(model_dir, run_dir.TENSORBOARD), write_graph=False),
    ]
    if verbose:  # placed before the summary, so the progress bar ends its line first
        callbacks.append(keras.callbacks.ProgbarLogger())
    callbacks.append(summary)
    callbacks.append(checkpoint.Checkpointing(model_dir, bank, run_identity, summary, apl, early_stopping, resumed))
    try:
        trainer.fit(train_ds, epochs=config.epochs, initial_epoch=first_epoch, callbacks=callbacks,
                    verbose=verbose, shuffle=False,
                    steps_per_epoch=pipeline.batches_per_epoch(splits.train, batch))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        # A corrupt shard or an image that does not decode surfaces here.
        raise pipeline.explain_read_error(splits.train, error, splits.repair_hint) from None

    # Evaluate the best epoch (EarlyStopping restored its weights) on val and test,
    # against full labels wherever they are known.
    best = max(summary.records, key=lambda record: record["val_map"])
    val_probs = predictor.probabilities(val_ds, splits.val.num_examples)
    test_metrics = None
    if test_ds is not None:
        test_probs = predictor.probabilities(test_ds, splits.test.num_examples)
        test_metrics = metrics.evaluate(test_labels.full, test_probs, config.threshold)
    results = {
        "config": dataclasses.asdict(config),
        "class_names": list(splits.class_names),
        "history": summary.records,
        "apl_rounds": apl.rounds if apl else [],
        "best_epoch": best["epoch"],
        "val": metrics.evaluate(val_labels.full if splits.val.full_labels_known else val_targets, val_probs,
                                config.threshold),
        "test": test_metrics,
    }
    _save_run(model_dir, model, trainer, bank, results)
    log(format_results(results))
    log(f"Results, best weights and TensorBoard logs are in {model_dir}")
    return results


def _fit_to_known_labels(config, splits, log):
    """The config, adjusted to what the data knows: a user's own data has no full training labels."""
    if not splits.train.full_labels_known and (config.loss == "full" or config.train_set_variant == "clean"):
        raise UsageError(f"{splits.train.directory} has single-positive labels only (no full labels): "
                         "--loss=full and --train_set_variant=clean need full training labels")
    if not splits.val.full_labels_known and config.val_set_variant == "clean":
        log("The validation labels are single-positive (no --val_csv at conversion): "
            "selecting epochs on them (--val_set_variant=observed).")
        config = dataclasses.replace(config, val_set_variant="observed")
    return config


def format_results(results):
    """A small table of the val and test metrics at the best epoch."""
    labels = "full" if results["config"]["val_set_variant"] == "clean" else "single-positive"
    test = results["test"]
    lines = [f"Best epoch {results['best_epoch']} (by validation mAP, {labels} labels)",
             f"{'metric':<16}{'val':>8}{'test' if test else '':>8}"]
    for key in results["val"]:
        lines.append(f"{key:<16}{results['val'][key]:>8.2f}" + (f"{test[key]:>8.2f}" if test else ""))
    return "\n".join(lines)


def _save_run(model_dir, model, trainer, bank, results):
    """Writes the run's files, each atomically; TrainingError naming the file if the disk refuses one."""
    # Saved uncompiled: the training loss reads a label bank that a user of the
    # model does not have, and `keras.saving.load_model` must just work.
    saves = (
        (MODEL_FILE, models.for_saving(model).save),  # Keras's own layers only
        (BEST_WEIGHTS, trainer.save_weights),  # the training model's, ROLE's estimator too
        (LABEL_BANK, lambda path: np.save(path, bank.numpy())),  # the final labels, pseudo-negatives included
        (RESULTS, lambda path: _dump_json(path, results)),
    )
    for name, save in saves:
        path = os.path.join(model_dir, name)
        try:
            _replace(path, save)
        except OSError as error:
            raise TrainingError(f"training finished but {path} could not be written ({reason(error)}); the last "
                                "epoch's checkpoint is kept: free space and run the same command, which writes the "
                                "files without training again") from None


def _replace(path, save):
    """save(temporary path) then rename over `path`: a kill leaves the old file or the new one, never half of one.

    A save that fails (a full disk) takes its partial temporary file with it.
    """
    name, extension = os.path.basename(path).split(".", 1)
    temporary = os.path.join(os.path.dirname(path), f"{name}-partial.{extension}")  # Keras checks the extension
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _dump_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=_to_builtin)


def _to_builtin(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
