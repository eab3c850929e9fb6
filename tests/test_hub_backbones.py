"""--backbone=hub:<preset> (issue 26, spml_tf/nets/hub.py): tiny random KerasHub presets saved with KerasHub's own
save_to_preset (hub_fixtures.py), one of each kind: a CNN with BatchNorm (resnet), a fixed-size transformer with a
class token (vit), and one whose position embeddings are interpolated on load (dinov2)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("keras_hub")

import hub_fixtures  # noqa: E402
import raw_fixtures  # noqa: E402
from spml_tf import config as config_lib, methods  # noqa: E402
from spml_tf.core.errors import UsageError  # noqa: E402
from spml_tf.data import datasets  # noqa: E402
from spml_tf.nets import hub, models  # noqa: E402
from spml_tf.training import checkpoint, run_dir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("resnet", "vit", "dinov2")
# The normalisation each fixture's converter was saved with: (mean, std) of (x / 255 - mean) / std.
NORMALISATION = {"resnet": hub_fixtures.IMAGENET, "vit": hub_fixtures.HALF, "dinov2": hub_fixtures.IMAGENET}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """{family: preset directory}, each made for 32 x 32 images."""
    base = tmp_path_factory.mktemp("hub_presets")
    return {family: hub_fixtures.save_tiny(family, str(base / family)) for family in FAMILIES}


def _config(preset, **overrides):
    settings = dict(backbone=f"hub:{preset}", weights="imagenet", image_size=32)
    return config_lib.from_overrides("digits", **{**settings, **overrides})


def _images(count=3, size=32, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def _backbone_of(model):
    import keras_hub

    (backbone,) = [layer for layer in model.layers if isinstance(layer, keras_hub.models.Backbone)]
    return backbone


def _quiet(line):
    del line


# --- The classifier: the preset's normalisation, its backbone, its pooling, the head --------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_is_the_presets_normalisation_backbone_pooling_and_the_logits_layer(presets, family):
    """build_model's output on images in [0, 255] is the manual composition, with a backbone loaded independently
    from the preset: (x / 255 - mean) / std -> backbone -> class token (ViT, DINOv2) or the feature map's average
    (ResNet) -> the Dense "logits" layer's weights. predict and a call without `training` (what export traces)
    alike: the converter's resize, which leaked training mode into BatchNorm, is off."""
    import keras_hub

    model = models.build_model(_config(presets[family]), 5)
    images = _images()
    assert model.output.shape == (None, 5) and model.predict(images, verbose=0).shape == (3, 5)

    mean, std = (np.asarray(v, np.float32) for v in NORMALISATION[family])
    normalised = (images / 255.0 - mean) / std
    reference = keras_hub.models.Backbone.from_preset(presets[family])
    features = np.asarray(reference({"images": normalised} if isinstance(reference.input, dict) else normalised,
                                    training=False))
    pooled = features.mean(axis=(1, 2)) if family == "resnet" else features[:, 0]
    kernel, bias = model.get_layer("logits").get_weights()
    expected = pooled @ kernel + bias
    assert np.abs(expected).max() > 0.1  # not a trivially small output
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_none_starts_the_backbone_from_random_weights(presets, family):
    import keras_hub

    preset_weights = keras_hub.models.Backbone.from_preset(presets[family]).get_weights()
    loaded = _backbone_of(models.build_model(_config(presets[family]), 5)).get_weights()
    random = _backbone_of(models.build_model(_config(presets[family], weights="none"), 5)).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, preset_weights))
    assert max(float(np.abs(a - b).max()) for a, b in zip(random, preset_weights)) > 0.1


# --- Image sizes, heads and flags a hub backbone takes or refuses -----------------------------------------------------


@pytest.mark.parametrize("size", [32, 48])
def test_a_resnet_preset_takes_any_image_size(presets, size):
    model = models.build_model(_config(presets["resnet"], image_size=size), 5)
    assert model.input.shape == (None, size, size, 3)
    assert np.isfinite(model.predict(_images(2, size), verbose=0)).all()


def test_a_dinov2_preset_is_built_at_the_image_size_its_position_embeddings_interpolated_and_frozen(presets):
    model = models.build_model(_config(presets["dinov2"], image_size=48), 5)
    backbone = _backbone_of(model)
    assert tuple(backbone.image_shape) == (48, 48, 3)
    assert model.predict(_images(2, 48), verbose=0).shape == (2, 5)
    embeddings = backbone.embeddings.interpolated_position_embeddings
    assert backbone.embeddings.position_embeddings.shape == (1, 1 + 4 * 4, 16)  # the preset's: 32 px, patches of 8
    assert embeddings.shape == (1, 1 + 6 * 6, 16)  # interpolated to the 6 x 6 patches of 48 px
    assert not embeddings.trainable and all(v is not embeddings for v in model.trainable_variables)


def test_a_vit_preset_at_another_size_is_one_usage_error_naming_its_size(presets):
    with pytest.raises(UsageError) as error:
        models.build_model(_config(presets["vit"], image_size=48), 5)
    message = str(error.value)
    assert "\n" not in message and "--image_size=32" in message and "ViTBackbone" in message


def test_boostlu_needs_a_feature_map(presets):
    with pytest.raises(UsageError, match=r"^--head=boostlu needs a feature map, and a ViTBackbone gives tokens"):
        models.build_model(_config(presets["vit"], head="boostlu"), 5)
    model = models.build_model(_config(presets["resnet"], head="boostlu"), 5)
    assert type(model.get_layer("logits")).__name__ == "Conv2D"  # the BoostLU head's 1x1 convolution
    assert model.predict(_images(2), verbose=0).shape == (2, 5)


def test_a_hub_backbone_takes_no_weights_file_and_needs_a_preset(tmp_path):
    weights_file = tmp_path / "resnet.weights.h5"
    weights_file.write_bytes(b"weights")
    with pytest.raises(UsageError, match="a hub backbone starts from its preset's weights"):
        _config(str(tmp_path), weights=str(weights_file))
    with pytest.raises(UsageError, match=r"--backbone=hub: needs a preset"):
        config_lib.from_overrides("digits", backbone="hub:")
    with pytest.raises(UsageError, match=r"--backbone=hub: needs a preset"):
        hub.preset_of("hub:")


def test_a_missing_preset_directory_is_one_line_from_the_command_line(tiny_digits_dir, tmp_path):
    model_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_main.py"), "--backbone=hub:/nope",
                             f"--data_dir={tiny_digits_dir}", f"--model_dir={model_dir}", "--image_size=32",
                             "--epochs=2", "--warmup_epochs=1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("train_main.py: error: cannot load the preset '/nope': no such directory"), lines
    assert not model_dir.exists()  # a run that never started leaves no run directory behind


# --- What trains: the frozen backbone, the head's learning rate, every loss, mixed precision -------------------------


def _trainer(config, tiny_digits_dir, tmp_path, positives=False):
    from spml_tf.training import distribute, trainer

    config = dataclasses.replace(config, data_dir=tiny_digits_dir, model_dir=str(tmp_path))
    splits = datasets.load("digits", tiny_digits_dir)
    labels = splits.labels("train")
    placement = distribute.make_strategy("one_device", config.batch_size)
    loss = methods.for_config(config)
    data = trainer.make_datasets(config, splits, loss, 0, placement)
    given = ((labels.full == 1) & (labels.observed != 1)).astype(np.float32) if positives else None
    return trainer.build_trainer(config, splits, labels, loss, placement, _quiet, given), data


def _weights_by_path(variables):
    return {v.path: np.array(v) for v in variables}


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_backbone_trains_only_the_logits_layer(presets, tiny_digits_dir, tmp_path, frozen):
    """--freeze_backbone: after fit steps only the logits layer changed; the backbone's weights, BatchNorm's moving
    statistics included, did not. Without it (the control) they all change."""
    import keras

    keras.utils.set_random_seed(0)
    config = _config(presets["resnet"], loss="an", batch_size=16, learning_rate=0.01, freeze_backbone=frozen)
    built, data = _trainer(config, tiny_digits_dir, tmp_path)
    backbone = _backbone_of(built.model)
    before = _weights_by_path(backbone.weights)
    head_before = _weights_by_path(built.model.get_layer("logits").weights)
    moving = [path for path in before if "moving_" in path]
    assert moving  # BatchNorm's statistics are among the backbone's weights
    built.training_model.fit(data.train, epochs=1, steps_per_epoch=3, verbose=0)
    after = _weights_by_path(backbone.weights)
    head_after = _weights_by_path(built.model.get_layer("logits").weights)
    assert all(not np.array_equal(head_before[path], head_after[path]) for path in head_before)
    changed = [path for path in before if not np.array_equal(before[path], after[path])]
    if frozen:
        assert changed == []
        assert {v.path for v in built.training_model.trainable_variables} == {"logits/kernel", "logits/bias"}
    else:
        assert set(changed) == set(before)  # every weight, each moving statistic too


@pytest.mark.parametrize("family", FAMILIES)
def test_the_head_lr_mult_applies_to_the_logits_variables_only(presets, family):
    """One step of the trainer's SGD (momentum 0, no weight decay) on gradients of ones moves each variable by
    lr * its multiplier: head_lr_mult for the logits layer's kernel and bias, 1 for every backbone variable (their
    paths carry no model prefix, so the head is found by its layer's name only)."""
    import keras

    from spml_tf.training import trainer

    config = _config(presets[family], optimizer="sgd", learning_rate=0.01, momentum=0.0, weight_decay=0.0,
                     head_lr_mult=10.0)
    model = models.build_model(config, 5)
    optimizer = trainer.make_optimizer(config)
    variables = model.trainable_variables
    optimizer.build(variables)
    head = {"logits/kernel", "logits/bias"}
    assert head <= {v.path for v in variables}
    multipliers = {v.path: m for v, m in zip(variables, optimizer._multipliers)}
    assert {path for path, m in multipliers.items() if m == 10.0} == head
    assert all(m == 1.0 for path, m in multipliers.items() if path not in head)

    before = [np.array(v) for v in variables]
    optimizer.apply_gradients([(keras.ops.ones_like(v), v) for v in variables])
    for variable, old in zip(variables, before):
        step = old - np.array(variable)
        expected = 0.01 * (10.0 if variable.path in head else 1.0)
        np.testing.assert_allclose(step, expected, rtol=1e-3, atol=1e-6, err_msg=variable.path)


@pytest.mark.parametrize("loss_name", list(methods.LOSSES))
def test_every_registered_loss_trains_on_a_hub_backbone(presets, tiny_digits_dir, tmp_path, loss_name):
    """Two steps of each loss (with given pseudo-positives, which vlpl and aevlp train on) on the tiny hub ResNet
    at 32 px: a finite loss."""
    import keras

    keras.utils.set_random_seed(0)
    config = _config(presets["resnet"], loss=loss_name, epochs=2, warmup_epochs=1, batch_size=16, seed=0)
    built, data = _trainer(config, tiny_digits_dir, tmp_path, positives=True)
    history = built.training_model.fit(data.train, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_mixed_bfloat16_trains_a_hub_backbone_with_float32_logits(presets, tiny_digits_dir, tmp_path, family):
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        config = _config(presets[family], loss="em", batch_size=16, mixed_precision="mixed_bfloat16")
        built, data = _trainer(config, tiny_digits_dir, tmp_path)
        history = built.training_model.fit(data.train, epochs=1, steps_per_epoch=3, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert np.all(np.isfinite(history.history["loss"]))
    assert _backbone_of(built.model).compute_dtype == "bfloat16"  # the policy reached the backbone
    assert built.model.output.dtype == "float32"
    assert np.asarray(built.model(_images(2), training=False)).dtype == np.float32


# --- Two replicas equal one device -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_mirrored_training_of_a_hub_resnet_equals_one_device(presets):
    """Two logical CPUs under MirroredStrategy, 3 steps of the trainer's SGD: the weights, BatchNorm's moving
    statistics included, equal one device's, because hub.load synchronises the backbone's BatchNorm; with each
    replica's own statistics (the control) they do not."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distribute_check.py"), "hub_step",
                             presets["resnet"]], capture_output=True, text=True, cwd=ROOT, timeout=900,
                            env={**os.environ, "SPML_CHECK_DEVICES": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    ours, control = outcome["hub"], outcome["unsynchronized"]
    assert ours["batch_norms"] > 0 and ours["synchronized"] and not control["synchronized"]
    assert ours["loss_mirrored"] == pytest.approx(ours["loss_one_device"], abs=1e-5)
    assert ours["max_weight_difference"] < 1e-5, ours
    assert ours["max_moving_statistic_relative_difference"] < 1e-5, ours
    assert control["max_weight_difference"] > 1e-3, control
    assert control["max_moving_statistic_relative_difference"] > 1e-2, control


# --- End to end: convert, train, export, predict, Classifier ---------------------------------------------------------


def _run(*command, timeout=900):
    result = subprocess.run(list(command), capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    from spml_tf.data import convert

    base = tmp_path_factory.mktemp("voc")
    raw_fixtures.make_voc(str(base / "raw"))
    convert.convert(convert.ConvertConfig(dataset="voc", raw_dir=str(base / "raw"), out_dir=str(base / "data")),
                    log=_quiet)
    return str(base / "data"), str(base / "raw")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_a_hub_run_trains_exports_predicts_and_loads_end_to_end(presets, voc_dir, tmp_path, family):
    """Synthetic VOC: train_main.py with the tiny preset, then the exported SavedModel, the predict command,
    Classifier.from_run and model.keras (safe_mode) all give the same probabilities."""
    import keras
    import tensorflow as tf

    from spml_tf.serving import classifier

    data_dir, raw_dir = voc_dir
    model_dir, export_dir = tmp_path / "run", tmp_path / "serving"
    result = _run(sys.executable, os.path.join(ROOT, "train_main.py"), "--dataset=voc", f"--data_dir={data_dir}",
                  f"--backbone=hub:{presets[family]}", "--image_size=32", "--epochs=2", "--batch_size=8",
                  "--loss=em_apl", "--warmup_epochs=1", f"--model_dir={model_dir}", f"--export_dir={export_dir}")
    assert "Exported the SavedModel" in result.stdout
    results = json.load(open(model_dir / run_dir.RESULTS))
    assert results["config"]["backbone"] == f"hub:{presets[family]}" and len(results["history"]) == 2
    assert all(np.isfinite(epoch["loss"]) for epoch in results["history"])

    jpegs = sorted(os.path.join(raw_dir, "VOCdevkit", "VOC2012", "JPEGImages", name)
                   for name in os.listdir(os.path.join(raw_dir, "VOCdevkit", "VOC2012", "JPEGImages")))[:3]
    predicted = _run(sys.executable, "-m", "spml_tf.predict", f"--saved_model={export_dir}", "--top_k=3", *jpegs)
    assert [line.split(":")[0] for line in predicted.stdout.splitlines() if line.startswith(raw_dir)] == jpegs

    served = tf.saved_model.load(str(export_dir / "1")).signatures["serving_default"](
        image_bytes=tf.constant([open(path, "rb").read() for path in jpegs]))["probabilities"].numpy()
    assert served.shape == (3, 20)
    from_run = classifier.Classifier.from_run(str(model_dir)).predict_files(jpegs)
    np.testing.assert_allclose(from_run, served, atol=1e-5)

    model = keras.saving.load_model(str(model_dir / run_dir.MODEL_FILE), safe_mode=True)
    assert model.get_layer("logits") is not None
    from spml_tf.data import pipeline

    decoded = np.stack([pipeline.decode_and_resize(open(path, "rb").read(), 32).numpy() for path in jpegs])
    keras_probabilities = 1.0 / (1.0 + np.exp(-np.asarray(model(decoded, training=False), np.float64)))
    np.testing.assert_allclose(keras_probabilities, served, atol=1e-5)


# --- Killed and resumed ---------------------------------------------------------------------------------------------


def _train_main(*args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_main.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outcome(model_dir):
    """What a finished run leaves: its results (bar the paths), its label bank, its final model's weights."""
    import keras

    results = json.load(open(os.path.join(model_dir, run_dir.RESULTS)))
    del results["config"]["model_dir"]
    model = keras.saving.load_model(os.path.join(model_dir, run_dir.MODEL_FILE), safe_mode=True)
    return results, np.load(os.path.join(model_dir, run_dir.LABEL_BANK)), model.get_weights()


@pytest.mark.slow
def test_a_killed_hub_run_resumes_to_the_results_of_an_uninterrupted_one(presets, tiny_digits_dir, tmp_path):
    args = [f"--data_dir={tiny_digits_dir}", f"--backbone=hub:{presets['resnet']}", "--weights=imagenet",
            "--epochs=3", "--warmup_epochs=1", "--patience=10", "--image_size=32", "--batch_size=16",
            "--deterministic"]
    whole = _train_main(*args, f"--model_dir={tmp_path / 'whole'}")
    assert whole.wait(900) == 0, whole.stderr.read()[-3000:]

    killed_dir = tmp_path / "killed"
    run = _train_main(*args, f"--model_dir={killed_dir}")
    pointer = killed_dir / checkpoint.DIRECTORY / checkpoint.LATEST
    deadline = time.monotonic() + 900
    while not pointer.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)  # after the first epoch and its APL round
    run.wait(60)
    assert run.returncode == -signal.SIGKILL
    epochs_done = checkpoint.latest(str(killed_dir)).epoch
    assert 1 <= epochs_done < 3 and not (killed_dir / run_dir.RESULTS).exists()

    again = _train_main(*args, f"--model_dir={killed_dir}")
    assert again.wait(900) == 0, again.stderr.read()[-3000:]
    assert f"Resuming {killed_dir} after epoch {epochs_done}" in again.stdout.read()
    (results, bank, weights), (expected, expected_bank, expected_weights) = (_outcome(killed_dir),
                                                                             _outcome(tmp_path / "whole"))
    assert results == expected  # history, APL rounds, best epoch, val and test metrics
    np.testing.assert_array_equal(bank, expected_bank)
    assert len(weights) == len(expected_weights)
    for a, b in zip(weights, expected_weights):
        np.testing.assert_array_equal(a, b)
    assert len(results["apl_rounds"]) == 2
