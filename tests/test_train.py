"""End to end: model.fit with the label bank, validation mAP, APL and early stopping."""

import json
import os

import numpy as np
import pytest

from spml_tf import config as config_lib
from spml_tf.training import trainer as train
from spml_tf.data import datasets, pipeline
from spml_tf.methods import em as pseudo_label


def _config(data_dir, model_dir, **overrides):
    settings = dict(data_dir=data_dir, model_dir=model_dir, epochs=3, warmup_epochs=1, batch_size=32, patience=10)
    return config_lib.from_overrides("digits", **{**settings, **overrides})


def test_em_apl_trains_and_pseudo_labels_after_warmup(tiny_digits_dir, tmp_path):
    config = _config(tiny_digits_dir, str(tmp_path))
    results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)

    observed = pipeline.read_labels(datasets.load("digits", tiny_digits_dir).train).observed
    per_round = pseudo_label.negatives_per_round((observed == 0).sum(axis=0), config.neg_proportion, 3 - 1)
    # Rounds after epochs 1 and 2; none after the last epoch, whose labels nothing would train on.
    assert [r["epoch"] for r in results["apl_rounds"]] == [1, 2]
    assert all(r["new_pseudo_negatives"] == per_round.sum() for r in results["apl_rounds"])
    bank = np.load(tmp_path / "label_bank.npy")
    np.testing.assert_array_equal((bank < 0).sum(axis=0), 2 * per_round)
    np.testing.assert_array_equal(bank == 1, observed == 1)  # positives untouched
    assert ((bank[bank < 0] > -1)).all()

    assert [r["epoch"] for r in results["history"]] == [1, 2, 3]
    assert all("val_map" in r and "loss" in r for r in results["history"])
    assert results["history"][1]["apl_new_pseudo_negatives"] == per_round.sum()
    best = max(results["history"], key=lambda r: r["val_map"])
    assert results["best_epoch"] == best["epoch"]
    # Best weights are restored before evaluation: val mAP equals the best epoch's.
    assert results["val"]["map"] == pytest.approx(best["val_map"], abs=1e-6)
    assert 0 <= results["test"]["map"] <= 100
    for name in ("results.json", "best.weights.h5", "model.keras", "tensorboard"):
        assert os.path.exists(tmp_path / name), name
    stored = json.load(open(tmp_path / "results.json"))
    assert stored["config"]["loss"] == "em_apl" and stored["test"] == results["test"]
    # Per-class AP by class name, whose mean is the mAP.
    for split in ("val", "test"):
        per_class = stored["per_class_ap"][split]
        assert list(per_class) == stored["class_names"]
        assert np.mean(list(per_class.values())) == pytest.approx(stored[split]["map"], abs=1e-9)


def test_the_end_of_a_run_lists_the_classes_worst_first():
    results = {"config": {"val_set_variant": "clean"}, "best_epoch": 2, "val": {"map": 50.0}, "test": {"map": 40.0},
               "per_class_ap": {"val": {"a": 50.0}, "test": {f"c{i:02d}": 100.0 - i for i in range(12)}}}
    lines = train.format_results(results).splitlines()
    start = lines.index("AP per class on test, worst first (2 more with --per_class):")
    assert [line.split() for line in lines[start + 1:]] == [[f"c{i:02d}", f"{100.0 - i:.2f}"]
                                                           for i in range(11, 1, -1)]
    every = train.format_results(results, per_class=True).splitlines()
    assert "AP per class on test, worst first:" in every and every[-1].split() == ["c00", "100.00"]


def test_patience_zero_stops_at_first_non_improvement(tiny_digits_dir, tmp_path):
    config = _config(tiny_digits_dir, str(tmp_path), loss="an", epochs=6, patience=0, learning_rate=3e-2)
    results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    maps = [r["val_map"] for r in results["history"]]
    # Training ran while mAP improved and stopped right after the first epoch that did not.
    assert all(later > earlier for earlier, later in zip(maps[:-2], maps[1:-1]))
    assert len(maps) == 6 or maps[-1] <= max(maps[:-1])
    assert results["apl_rounds"] == []


def test_clean_train_set_variant_trains_on_full_labels(tiny_digits_dir, tmp_path):
    """--train_set_variant=clean puts the full labels in the bank: `an` then is the `full` oracle."""
    config = _config(tiny_digits_dir, str(tmp_path), loss="an", epochs=1, train_set_variant="clean")
    train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    full = pipeline.read_labels(datasets.load("digits", tiny_digits_dir).train).full
    np.testing.assert_array_equal(np.load(tmp_path / "label_bank.npy"), full)


def test_observed_val_set_variant_selects_on_single_positive_labels(tiny_digits_dir, tmp_path, monkeypatch):
    """--val_set_variant=observed scores validation against the single-positive val labels."""
    from spml_tf.training import evaluation

    seen = []
    original = evaluation.ValidationMAP.__init__

    def spy(self, predictor, dataset, labels):
        seen.append(labels)
        original(self, predictor, dataset, labels)

    monkeypatch.setattr(evaluation.ValidationMAP, "__init__", spy)
    config = _config(tiny_digits_dir, str(tmp_path), loss="em", epochs=1, val_set_variant="observed")
    results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    val = pipeline.read_labels(datasets.load("digits", tiny_digits_dir).val)
    np.testing.assert_array_equal(seen[0], val.observed)
    assert not np.array_equal(val.observed, val.full)
    # The reported val metrics stay against full labels.
    assert results["history"][0]["val_map"] != pytest.approx(results["val"]["map"], abs=1e-9)


def test_role_trains_inside_fit_and_saves_the_plain_classifier(tiny_digits_dir, tmp_path):
    import keras

    config = _config(tiny_digits_dir, str(tmp_path), loss="role", epochs=2)
    results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    assert len(results["history"]) == 2 and 0 < results["test"]["map"] <= 100
    classifier = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert classifier.output_shape == (None, 10)  # the estimator is for training only


@pytest.mark.parametrize("loss", ["an_ls", "wan", "epr"])
def test_baselines_train(tiny_digits_dir, tmp_path, loss):
    config = _config(tiny_digits_dir, str(tmp_path), loss=loss, epochs=1)
    results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    assert np.isfinite(results["history"][0]["loss"]) and 0 < results["test"]["map"] <= 100


# --- The trainer's steps, each without a fit -------------------------------------------------------------------------


def _steps(tiny_digits_dir, model_dir, **overrides):
    from spml_tf import methods as losses
    from spml_tf.training import distribute

    config = _config(tiny_digits_dir, str(model_dir), **overrides)
    splits = datasets.load("digits", tiny_digits_dir)
    labels = {split: splits.labels(split) for split in ("train", "val", "test")}
    loss = losses.for_config(config)
    placement = distribute.make_strategy("one_device", config.batch_size)
    return config, splits, labels, loss, placement


def test_make_datasets_gives_the_role_model_its_index_input(tiny_digits_dir, tmp_path):
    for loss_name, first_input in (("em", (None, 24, 24, 3)), ("role", ((None, 24, 24, 3), (None,)))):
        config, splits, _, loss, placement = _steps(tiny_digits_dir, tmp_path, loss=loss_name)
        data = train.make_datasets(config, splits, loss, 1, placement)
        inputs, index = data.train.element_spec
        shapes = tuple(spec.shape.as_list() for spec in inputs) if isinstance(inputs, tuple) else inputs.shape.as_list()
        expected = tuple(list(s) for s in first_input) if isinstance(first_input[0], tuple) else list(first_input)
        assert shapes == expected and index.shape.as_list() == [None]
        assert data.train.cardinality().numpy() == 2 * pipeline.batches_per_epoch(splits.train, 32)  # epochs 2, 3


def test_build_trainer_compiles_the_classifier_and_its_bank(tiny_digits_dir, tmp_path):
    for loss_name, bank_labels in (("em_apl", "observed"), ("full", "full")):
        config, splits, labels, loss, placement = _steps(tiny_digits_dir, tmp_path, loss=loss_name)
        trainer = train.build_trainer(config, splits, labels["train"], loss, placement, log=lambda line: None)
        assert trainer.training_model is trainer.model and trainer.model.get_layer("logits").units == 10
        np.testing.assert_array_equal(trainer.bank.numpy(), getattr(labels["train"], bank_labels))
        assert trainer.training_model.optimizer.epsilon == 1e-8  # torch's Adam
    config, splits, labels, loss, placement = _steps(tiny_digits_dir, tmp_path, loss="role")
    role = train.build_trainer(config, splits, labels["train"], loss, placement, log=lambda line: None)
    assert role.training_model is not role.model and role.training_model.output_shape == (None, 20)


def test_make_callbacks_orders_them_and_hands_the_stateful_ones_to_the_checkpoint(tiny_digits_dir, tmp_path):
    from spml_tf.training import checkpoint, evaluation

    config, splits, labels, loss, placement = _steps(tiny_digits_dir, tmp_path)
    data = train.make_datasets(config, splits, loss, 0, placement)
    trainer = train.build_trainer(config, splits, labels["train"], loss, placement, log=lambda line: None)
    callbacks, summary = train.make_callbacks(config, splits, labels, data, trainer, loss, str(tmp_path),
                                              run_identity={}, resumed=None, log=lambda line: None)
    kinds = [type(callback).__name__ for callback in callbacks]
    assert kinds == ["ValidationMAP", "APLCallback", "StopOnNaN", "ResumableEarlyStopping", "TensorBoard",
                     "EpochSummary", "Checkpointing"]
    assert isinstance(callbacks[-1], checkpoint.Checkpointing) and summary is callbacks[-2]
    assert sorted(callbacks[-1].stateful) == ["apl", "early_stopping", "history"]
    assert isinstance(callbacks[-1].stateful["early_stopping"], evaluation.ResumableEarlyStopping)


def test_a_run_directory_on_another_filesystem(tiny_digits_dir):
    """--model_dir on TensorFlow's ram:// filesystem: trained, resumed (no more training), exported."""
    import tensorflow as tf

    from spml_tf.serving import export
    from spml_tf.core import files
    from spml_tf.training import run_dir

    model_dir = f"ram://runs/digits-{os.getpid()}"
    config = _config(tiny_digits_dir, model_dir, loss="em", epochs=2)
    first = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    for name in (run_dir.RESULTS, run_dir.MODEL_FILE, run_dir.BEST_WEIGHTS, run_dir.LABEL_BANK, run_dir.CHECKPOINT):
        assert tf.io.gfile.exists(f"{model_dir}/{name}"), name
    assert files.read_json(f"{model_dir}/{run_dir.RESULTS}")["test"] == first["test"]
    said = []
    again = train.train_and_evaluate(config, log=said.append, verbose=0)
    assert any(f"Resuming {model_dir} after epoch 2" in line for line in said)
    assert again["history"] == first["history"]
    version = export.export_run(model_dir, f"ram://serving/digits-{os.getpid()}")
    assert tf.io.gfile.exists(f"{version}/saved_model.pb")
