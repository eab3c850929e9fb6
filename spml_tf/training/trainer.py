"""Builds and runs a training, step by step: data, trainer (model, loss over the label bank), callbacks, fit, evaluate
the best epoch, save. Each step is a function of its own; `train_and_evaluate` reads as their table of contents."""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from spml_tf import methods as losses
from spml_tf.core import files
from spml_tf.data import datasets, pipeline
from spml_tf.nets import models
from spml_tf.training import (checkpoint, distribute, evaluation, fit_progress, metrics, optimizers, run_dir,
                              vl_positives)
from spml_tf.core.errors import TrainingError, UsageError, reason
from spml_tf.training.label_bank import LabelBank


def make_optimizer(config):
    """The optimizer a run compiles with: Adam (no weight decay) or SGD as torch computes them, the head's
    learning rate `head_lr_mult` times the backbone's."""
    if config.optimizer == "sgd":
        return optimizers.TorchSGD(config.learning_rate, config.momentum, config.weight_decay, config.head_lr_mult)
    return optimizers.TorchAdam(config.learning_rate, head_lr_mult=config.head_lr_mult)


def default_model_dir(config):
    """runs/<dataset>-<loss>-<time> in the directory the command was started from (also under `bazel run`)."""
    base = os.environ.get("BUILD_WORKING_DIRECTORY", "")
    return os.path.join(base, "runs", f"{config.dataset}-{config.loss}-{time.strftime('%Y%m%d-%H%M%S')}")


def train_and_evaluate(config, log=print, verbose=1, per_class=False, progress="auto", log_every_steps=None,
                       positives=None):
    """Trains `config`, selects the epoch with the best validation mAP and returns the results dict.

    Prints a line per epoch, the metrics at the best epoch and the ten classes
    with the lowest test AP (every class with `per_class`). `progress` is how
    the steps of an epoch show (fit_progress: auto, bar, lines or none;
    verbose=0 is none), `log_every_steps` the steps between two lines of `lines`.
    `positives` ([N, C] of 0/1) stands in for CLIP's pseudo-positives of
    --vl_positives (bench/quality.py's simulated scorer, vl_positives.load).

    Writes results.json, the best weights, the final model and TensorBoard logs
    under config.model_dir (a fresh directory under runs/ when empty; any
    filesystem TensorFlow writes).
    """
    config = dataclasses.replace(config, model_dir=config.model_dir or default_model_dir(config))
    run_dir.check(config.model_dir)  # before any work: a file or a user's folder is refused at once
    losses.for_config(config)  # an unknown loss, or settings it contradicts, are refused before any work too
    placement = distribute.make_strategy(config.strategy, config.batch_size, config.worker_timeout, log)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:  # same results run after run, and a resumed run equal to an uninterrupted one
        tf.config.experimental.enable_op_determinism()
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32" if config.mixed_precision == "none" else config.mixed_precision)
    try:
        shown = fit_progress.FitProgress(progress if verbose else "none", config.epochs, config.batch_size,
                                         log_every_steps)
        return _run(config, placement, run_dir.of_worker(config.model_dir, placement), log, shown, per_class,
                    positives)
    except distribute.LOST_WORKER_ERRORS as error:
        if placement.num_workers == 1:
            raise
        raise placement.lost_worker(error) from None
    finally:
        keras.mixed_precision.set_global_policy(policy)  # the policy is global: leave it as it was


def _run(config, placement, model_dir, log, shown, per_class, positives):
    """Every step, under the precision policy, in the locked run directory."""
    splits = datasets.load(config.dataset, config.data_dir, config.observed_negatives)
    config = _fit_to_known_labels(config, splits, log)
    created = not tf.io.gfile.exists(model_dir)
    with run_dir.claim(model_dir):  # the directory is this run's until it ends (once the data is known to be there)
        try:
            results = _run_claimed(config, placement, model_dir, log, shown, per_class, positives, splits)
        except BaseException:
            run_dir.release_unused(model_dir, created)  # nothing written yet (a preset that would not load, ...)
            raise
    log(format_results(results, per_class))
    log(f"Results, best weights and TensorBoard logs are in {model_dir}")
    return results


def _run_claimed(config, placement, model_dir, log, shown, per_class, positives, splits):
    """The run in its claimed directory: resume or start, fit, evaluate the best epoch, save."""
    labels = {split: splits.labels(split) for split in ("train", "val", "test") if getattr(splits, split)}
    # A run killed earlier in this model_dir continues from its last complete epoch.
    resumed = checkpoint.latest(model_dir)
    run_identity = checkpoint.identity(config, splits.class_names, splits.train)
    if resumed:
        resumed.check_matches(run_identity)
    first_epoch = config.epochs if resumed and resumed.finished else (resumed.epoch if resumed else 0)
    loss = losses.for_config(config)
    data = make_datasets(config, splits, loss, first_epoch, placement)
    log(_describe(config, splits, placement))
    positives, vl_summary = vl_positives.load(config, type(loss), splits, labels["train"], positives, log)
    trainer = build_trainer(config, splits, labels["train"], loss, placement, log, positives)
    callbacks, summary = make_callbacks(config, splits, labels, data, trainer, loss, model_dir, run_identity,
                                        resumed, log, shown)
    if resumed:  # every part of the checkpoint was checked (make_callbacks: the callbacks' states) before this
        with placement.strategy.scope():
            resumed.restore_model(trainer.training_model, trainer.bank)
        log(f"Resuming {model_dir} after epoch {resumed.epoch}"
            + (" (early stopping had ended it)" if resumed.finished else ""))
    fit(trainer, data, callbacks, config, first_epoch, splits)
    results = evaluate_best_epoch(config, splits, labels, data, trainer, summary, callbacks)
    if vl_summary:
        results["vl_positives"] = vl_summary
    save_run(model_dir, trainer, results)
    return results


# --- Data -------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Datasets:
    train: tf.data.Dataset  # shuffled, augmented (image, index) batches of the epochs still to train
    train_eval: tf.data.Dataset  # the training images without augmentation, in order (APL predicts them)
    val: tf.data.Dataset
    test: tf.data.Dataset = None


def make_datasets(config, splits, loss, first_epoch, placement):
    """The tf.data pipelines of a run, from epoch `first_epoch` on."""
    size, batch = config.image_size, config.batch_size
    # Workers split one stream of batches between them, so each must see it in the same order.
    train = pipeline.make_train_dataset(splits.train, size, batch, config.random_flip, config.seed,
                                        epochs=config.epochs, first_epoch=first_epoch,
                                        deterministic=config.deterministic or placement.num_workers > 1)
    if loss.needs_example_index():  # the training model also reads the index (ROLE's label estimator)
        train = pipeline.with_index_as_input(train)
    return Datasets(
        train=train,
        train_eval=pipeline.make_eval_dataset(splits.train, size, batch),
        val=pipeline.make_eval_dataset(splits.val, size, batch),
        test=pipeline.make_eval_dataset(splits.test, size, batch) if splits.test else None,
    )


def _describe(config, splits, placement):
    line = (f"{config.dataset}: {splits.train.num_examples:,} train / {splits.val.num_examples:,} val / "
            + (f"{splits.test.num_examples:,} test images" if splits.test else "no test images")
            + f", {splits.train.num_classes} classes; loss {config.loss}; "
            + f"{placement.strategy.num_replicas_in_sync} replica(s), global batch {config.batch_size}")
    if splits.train.resized_to and splits.train.resized_to != config.image_size:
        line += (f"\nnote: the images were resized to {splits.train.resized_to} at conversion; --image_size="
                 f"{config.image_size} resizes them again")
    return line


# --- The trainer: the classifier, what fit trains, the label bank ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trainer:
    model: keras.Model  # the classifier: images in [0, 255] -> C logits; what is saved and exported
    training_model: keras.Model  # what `fit` trains: the classifier, or more (ROLE's label estimator)
    bank: LabelBank  # the training labels the loss reads at step time
    predictor: evaluation.Predictor  # the classifier's probabilities on a dataset, in example order


def build_trainer(config, splits, train_labels, loss, placement, log=print, positives=None):
    """The classifier, the model fit trains, and the label bank, compiled, in the strategy's scope.

    The oracle (and --train_set_variant=clean) trains on full labels, every
    other loss on the observed ones. The bank is a variable of the scope, so
    every replica reads the current labels.
    """
    with placement.strategy.scope():
        model = models.build_model(config, splits.train.num_classes, log)
        clean = loss.uses_full_labels or config.train_set_variant == "clean"
        bank = LabelBank(train_labels.full if clean else train_labels.observed)
        loss.attach(bank)  # a loss's own variables (LL-Cp's corrections) live in the scope too
        training_model = loss.training_model(model, train_labels.observed, config.seed)
        # CLIP's pseudo-positives (vl_positives.py), read by example index at step time as the bank is.
        positives = None if positives is None else tf.constant(positives, tf.float32)
        training_model.compile(optimizer=make_optimizer(config), loss=losses.LabelBankLoss(loss, bank, positives),
                               jit_compile=config.jit_compile)
        return Trainer(model, training_model, bank, evaluation.Predictor(model))


# --- Callbacks -------------------------------------------------------------------------------------------------------


def make_callbacks(config, splits, labels, data, trainer, loss, model_dir, run_identity, resumed, log=print,
                   progress=None):
    """The callbacks of `fit`, in order, and the EpochSummary among them.

    Validation mAP first (early stopping and checkpointing read it), then the
    loss's own (APL), then the ones that only record, then the checkpoint of
    it all, which restores their state on a resumed run.
    """
    summary = evaluation.EpochSummary(config.epochs, log=log)
    full_train = labels["train"].full if splits.train.full_labels_known else None
    context = losses.TrainingContext(config, trainer.bank, trainer.predictor, data.train_eval, full_train)
    callbacks = [evaluation.ValidationMAP(trainer.predictor, data.val, _validation_targets(config, labels["val"]))]
    callbacks += loss.callbacks(context)
    callbacks += [
        checkpoint.StopOnNaN(model_dir),
        evaluation.ResumableEarlyStopping(config.patience, config.max_map_drop),
        keras.callbacks.TensorBoard(files.join(model_dir, run_dir.TENSORBOARD), write_graph=False),
    ]
    if progress is not None:  # placed before the summary, so the progress bar is cleared before its line
        callbacks.append(progress)
    callbacks.append(summary)
    stateful = {callback.state_key: callback for callback in callbacks if hasattr(callback, "state_key")}
    if resumed:
        resumed.check_callbacks(stateful, trainer.training_model)  # before anything is restored
    callbacks.append(checkpoint.Checkpointing(model_dir, trainer.bank, run_identity, stateful, resumed))
    return callbacks, summary


def _validation_targets(config, val_labels):
    """Cole et al.'s "observed" variant selects on the single-positive val labels; "clean" on the full ones."""
    return val_labels.full if config.val_set_variant == "clean" else np.maximum(val_labels.observed, 0)


# --- Fit, evaluate, save ---------------------------------------------------------------------------------------------


def fit(trainer, data, callbacks, config, first_epoch, splits):
    """model.fit over the remaining epochs; a damaged shard or an image that does not decode is named."""
    try:
        trainer.training_model.fit(data.train, epochs=config.epochs, initial_epoch=first_epoch, callbacks=callbacks,
                                   verbose=0, shuffle=False,
                                   steps_per_epoch=pipeline.batches_per_epoch(splits.train, config.batch_size))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise pipeline.explain_read_error(splits.train, error, splits.repair_hint) from None


def evaluate_best_epoch(config, splits, labels, data, trainer, summary, callbacks):
    """The results dict: the best epoch's (early stopping restored its weights) metrics on val and test, against
    full labels wherever they are known."""
    best = max(summary.records, key=lambda record: record["val_map"])
    val_probs = trainer.predictor.probabilities(data.val, splits.val.num_examples)
    val_truth = labels["val"].full if splits.val.full_labels_known else _validation_targets(config, labels["val"])
    names = list(splits.class_names)
    test_metrics = test_per_class = None
    if data.test is not None:
        test_probs = trainer.predictor.probabilities(data.test, splits.test.num_examples)
        test_metrics, test_per_class = metrics.evaluate_with_classes(labels["test"].full, test_probs, names,
                                                                     config.threshold)
    val_metrics, val_per_class = metrics.evaluate_with_classes(val_truth, val_probs, names, config.threshold)
    results = {
        # The method as the README, --loss and the benchmarks name it (spml_tf/choices.py): em_apl, em_apl+boostlu.
        "method": config.loss if config.head == "linear" else f"{config.loss}+{config.head}",
        "config": dataclasses.asdict(config),
        "class_names": names,
        "history": summary.records,
        "apl_rounds": [],
        "best_epoch": best["epoch"],
        "val": val_metrics,
        "test": test_metrics,
        "per_class_ap": {"val": val_per_class, "test": test_per_class},
    }
    for callback in callbacks:  # what a loss's callbacks report (APL: its rounds)
        if hasattr(callback, "results"):
            results.update(callback.results())
    return results


def save_run(model_dir, trainer, results):
    """Writes the run's files, each atomically; TrainingError naming the file if the disk refuses one."""
    # Saved uncompiled: the training loss reads a label bank that a user of the
    # model does not have, and `keras.saving.load_model` must just work.
    saves = (
        (run_dir.MODEL_FILE, models.for_saving(trainer.model).save),  # Keras's own layers only
        (run_dir.BEST_WEIGHTS, trainer.training_model.save_weights),  # the training model's, ROLE's estimator too
        (run_dir.LABEL_BANK, lambda path: files.save_npy(path, trainer.bank.numpy())),  # the final labels
        (run_dir.RESULTS, lambda path: files.write_json(path, results)),
    )
    for name, save in saves:
        path = files.join(model_dir, name)
        try:
            files.replace(path, save)
        except (OSError, tf.errors.OpError) as error:
            files.release_failed_write(error)
            raise TrainingError(f"training finished but {path} could not be written ({reason(error)}); the last "
                                "epoch's checkpoint is kept: free space and run the same command, which writes the "
                                "files without training again") from None


def _fit_to_known_labels(config, splits, log):
    """The config, adjusted to what the data knows: a user's own data has no full training labels."""
    needs_full = losses.lookup(config.loss).uses_full_labels or config.train_set_variant == "clean"
    if not splits.train.full_labels_known and needs_full:
        raise UsageError(f"{splits.train.directory} has single-positive labels only (no full labels): "
                         f"--loss={config.loss} and --train_set_variant=clean need full training labels")
    if not splits.val.full_labels_known and config.val_set_variant == "clean":
        log("The validation labels are single-positive (no --val_csv at conversion): "
            "selecting epochs on them (--val_set_variant=observed).")
        config = dataclasses.replace(config, val_set_variant="observed")
    return config


def format_results(results, per_class=False, worst=10):
    """A small table of the val and test metrics at the best epoch, then the classes by AP, worst first: the
    `worst` lowest, or all of them with `per_class`."""
    labels = "full" if results["config"]["val_set_variant"] == "clean" else "single-positive"
    test = results["test"]
    lines = [f"Best epoch {results['best_epoch']} (by validation mAP, {labels} labels)",
             f"{'metric':<16}{'val':>8}{'test' if test else '':>8}"]
    for key in results["val"]:
        lines.append(f"{key:<16}{results['val'][key]:>8.2f}" + (f"{test[key]:>8.2f}" if test else ""))
    split = "test" if test else "val"
    aps = results["per_class_ap"][split]
    shown = metrics.worst_classes(aps, None if per_class else worst)
    more = "" if len(shown) == len(aps) else f" ({len(aps) - len(shown)} more with --per_class)"
    lines.append(f"AP per class on {split}, worst first{more}:")
    lines += [f"  {name:<22}{ap:>8.2f}" for name, ap in shown]
    return "\n".join(lines)
