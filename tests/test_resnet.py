"""torchvision's ResNet-50, computed by the Keras network: eval logits, a train-mode step's gradients and running
statistics, against torch's answers stored in tests/fixtures/torch (made by make_torch_fixtures.py)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import torch_parity as P
from spml_tf import config as config_lib
from spml_tf import methods as losses
from spml_tf.nets import models, resnet, torch_weights

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torch")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "resnet50_parity.npz")) as data:
        return {key: data[key] for key in data.files}


def _network():
    """build_model's resnet50 at the fixtures' size, with the drawn torchvision weights and head."""
    config = config_lib.from_overrides("voc", weights="none", image_size=P.IMAGE_SIZE)
    model = models.build_model(config, P.NUM_CLASSES)
    state = P.resnet50_state()
    backbone = model.get_layer("resnet50")
    backbone.set_weights(torch_weights.backbone_arrays(backbone, state, "drawn"))
    model.get_layer("logits").set_weights([state["fc.weight"].T, state["fc.bias"]])
    return model


def _relative_error(ours, reference):
    return float(np.linalg.norm(np.asarray(ours, np.float64) - reference) / np.linalg.norm(reference))


def test_eval_logits_equal_torchvisions(expected):
    logits = np.asarray(_network()(P.images(1, P.EVAL_BATCH), training=False))
    reference = expected["eval_logits_f64"]
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()
    assert np.abs(reference[0] - reference[1]).max() > 0.1  # the logits depend on the image


def test_a_train_mode_step_equals_torchs(expected):
    """BatchNorm on batch statistics, EM loss, batch of 4: gradients as close to torch's float64 answer as torch's
    own float32 computation is, and the running statistics it leaves give torch's eval logits."""
    model = _network()
    images = tf.constant(P.images(2, P.TRAIN_BATCH))
    loss_fn = losses.get("em", alpha=P.ALPHA)
    head = model.get_layer("logits")
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = model(images, training=True)
        loss = tf.reduce_mean(loss_fn.call(tf.constant(P.observed_labels()), logits))
    grad_image, grad_kernel, grad_bias = tape.gradient(loss, [images, head.kernel, head.bias])

    assert float(loss) == pytest.approx(float(expected["train_loss_f64"]), rel=1e-5)
    np.testing.assert_allclose(np.asarray(logits), expected["train_logits_f64"], atol=1e-4 * np.abs(
        expected["train_logits_f64"]).max())
    for name, ours in (("grad_image", grad_image), ("grad_fc_weight", np.asarray(grad_kernel).T),
                       ("grad_fc_bias", grad_bias)):
        error, torch_error = _relative_error(ours, expected[f"{name}_f64"]), float(expected[f"{name}_error_f32"])
        # "As close as torch float32 is": within 2x its error (the two float32 computations round differently).
        assert error <= 2.0 * torch_error, f"{name}: ours {error:.3g}, torch float32 {torch_error:.3g}"

    after = np.asarray(model(P.images(1, P.EVAL_BATCH), training=False))
    reference = expected["eval_logits_after_f64"]
    assert np.abs(after - reference).max() <= 1e-4 * np.abs(reference).max()
    assert np.abs(reference - expected["eval_logits_f64"]).max() > 1e-2  # the step did move the statistics


def test_the_saved_model_is_plain_keras_and_computes_the_same(tmp_path):
    model = _network()
    saved = models.for_saving(model)
    assert not any(isinstance(layer, resnet.BatchNorm) for layer in models._all_layers(saved))
    saved.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    images = P.images(1, P.EVAL_BATCH)
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images, training=False)))


def test_layers_follow_torchvisions_module_names():
    backbone = resnet.resnet50(32)
    weighted = [layer.name for layer in backbone.layers if layer.weights]
    torch_modules = []
    for key, _ in P.resnet50_keys():
        module = key.rsplit(".", 1)[0]
        if module != "fc" and module not in torch_modules:
            torch_modules.append(module)
    assert sorted(weighted) == sorted(torch_modules) and len(weighted) == len(set(weighted))
