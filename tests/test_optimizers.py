"""The trainer's Adam follows torch.optim.Adam (fixture made by make_torch_fixtures.py)."""

import os

import keras
import numpy as np
import pytest

import torch_parity as P
from spml_tf import config as config_lib
from spml_tf.training import trainer as train
from spml_tf.training import optimizers

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torch")


def _follow(optimizer, gradients):
    variable = keras.Variable(np.zeros(gradients.shape[1], np.float32))
    trajectory = []
    for step in gradients:
        optimizer.apply_gradients([(step, variable)])
        trajectory.append(np.asarray(variable).copy())
    return np.array(trajectory)


def test_the_trainers_adam_follows_torch_over_gradients_from_1e_9_to_1():
    with np.load(os.path.join(FIXTURES, "adam.npz")) as data:
        expected, learning_rate = data["trajectory"], float(data["learning_rate"])
    config = config_lib.from_overrides("digits", learning_rate=learning_rate)
    optimizer = train.make_optimizer(config)
    assert isinstance(optimizer, optimizers.TorchAdam) and optimizer.epsilon == 1e-8
    ours = _follow(optimizer, P.adam_gradients())
    assert np.abs(ours - expected).max() <= 1e-3 * learning_rate
    # Keras's own Adam does not: its epsilon is added before the bias correction.
    keras_adam = _follow(keras.optimizers.Adam(learning_rate, epsilon=1e-8), P.adam_gradients())
    assert np.abs(keras_adam - expected).max() > 1e-2 * learning_rate


def test_every_preset_trains_with_it():
    for dataset in config_lib.PRESETS:
        optimizer = train.make_optimizer(config_lib.PRESETS[dataset])
        assert isinstance(optimizer, optimizers.TorchAdam)
        assert float(optimizer.learning_rate) == pytest.approx(config_lib.PRESETS[dataset].learning_rate, rel=1e-6)
