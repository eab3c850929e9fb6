"""Models: normalisation layers, output shapes, and backbone weights from a local file."""

import keras
import numpy as np
import pytest

from spml_tf import config as config_lib
from spml_tf.nets import models


def test_caffe_normalisation_equals_keras_resnet50_preprocessing():
    images = np.random.RandomState(0).uniform(0, 255, size=(2, 5, 5, 3)).astype(np.float32)
    ours = np.asarray(models.caffe_preprocessing()(images))
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # And written out: BGR order, ImageNet mean subtracted, no scaling.
    np.testing.assert_allclose(ours[..., 0], images[..., 2] - 103.939, atol=1e-4)
    # The layer of runs saved by 0.1 computes the same, so their model.keras still loads and predicts alike.
    np.testing.assert_allclose(np.asarray(models.Normalize("caffe")(images)), ours, atol=1e-4)


def test_small_cnn_outputs_float32_logits():
    config = config_lib.from_overrides("digits", image_size=32)
    model = models.build_model(config, num_classes=7)
    logits = model(np.zeros((3, 32, 32, 3), np.float32))
    assert logits.shape == (3, 7) and logits.dtype == "float32"


def test_model_round_trips_through_keras_file(tmp_path):
    config = config_lib.from_overrides("digits", image_size=16)
    model = models.build_model(config, num_classes=4)
    images = np.random.RandomState(1).uniform(0, 255, size=(2, 16, 16, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(model(images)), atol=1e-6)


@pytest.mark.slow
def test_keras_resnet50_loads_backbone_weights_from_a_local_file(tmp_path):
    """--backbone=keras_resnet50 --weights=<file>: keras.applications' network starts from the file's values."""
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    config = config_lib.from_overrides("voc", backbone="keras_resnet50", weights=path, image_size=64)
    model = models.build_model(config, num_classes=20)
    backbone = model.get_layer("resnet50")
    for ours, theirs in zip(backbone.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert model.output_shape == (None, 20)
    assert np.asarray(backbone.get_layer("conv1_conv").kernel).std() > 0
