"""The methods after the paper, each against an independent NumPy statement of its authors' code:
LL-R / LL-Ct / LL-Cp (snucml/LargeLossMatters, youngwk/BridgeGapExplanationPAMC), the BoostLU head, the GR loss
and its schedules (yan4xi1/GRLoss), torch's SGD and the head's learning-rate multiplier, and the presets."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from spml_tf import config as config_lib
from spml_tf import methods as losses
from spml_tf.training import trainer as train
from spml_tf.nets import models
from spml_tf.training import optimizers
from spml_tf.core.errors import UsageError
from spml_tf.training.label_bank import LabelBank


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _bce(z, target):
    """torch's binary_cross_entropy_with_logits, float64."""
    return np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))


# --- LL ---------------------------------------------------------------------------------------------------------------


def ll_reference(labels, logits, epoch, delta, scheme):
    """The authors' compute_batch_loss, restated: (loss, modified mask). labels in {0, 1} (here also -1, which
    the authors' code has not; it is a known negative and never ranked)."""
    observed = (labels == 1).astype(np.float64)
    loss = _bce(logits, observed)
    corrected = _bce(logits, 1.0 - observed)
    unobserved_loss = (labels == 0) * loss
    clean_rate = 1.0
    for _ in range(epoch - 1):  # train.py: P['clean_rate'] -= P['delta_rel'] after every epoch
        clean_rate -= delta / 100.0
    if clean_rate == 1:  # epoch 1: nothing modified
        return loss.mean(), np.zeros(labels.shape, bool)
    batch, classes = labels.shape
    if scheme == "permanent":  # the paper's LL-Cp (BridgeGap's code): a constant k from epoch 2
        k = math.ceil(batch * classes * delta / 100.0)
    else:
        k = math.ceil(batch * classes * (1 - clean_rate))
    threshold = np.sort(unobserved_loss.ravel())[::-1][k - 1]  # torch.topk(...).values[-1]
    modified = unobserved_loss >= threshold
    if scheme == "reject":
        final = np.where(modified, 0.0, loss)
    else:
        final = np.where(modified, corrected, loss)
    return final.mean(), modified


def _batch(seed, batch=16, classes=10):
    rng = np.random.RandomState(seed)
    labels = np.zeros((batch, classes), np.float32)
    labels[np.arange(batch), rng.randint(classes, size=batch)] = 1.0
    labels[rng.rand(batch, classes) < 0.05] = -1.0
    labels[np.arange(batch), rng.randint(classes, size=batch)] = 1.0
    return labels, rng.normal(0, 2, (batch, classes)).astype(np.float32)


@pytest.mark.parametrize("key", ["ll_r", "ll_ct", "ll_cp"])
@pytest.mark.parametrize("epoch", [1, 2, 3, 7])
def test_ll_equals_the_authors_loss_epoch_by_epoch(key, epoch):
    loss = losses.get(key, ll_delta=4.0)
    loss.set_epoch(epoch, 10)
    for seed in range(3):
        labels, logits = _batch(seed)
        expected, modified = ll_reference(labels.astype(np.float64), logits.astype(np.float64), epoch, 4.0,
                                          loss.scheme)
        ours = float(tf.reduce_mean(loss(labels, logits)))
        assert ours == pytest.approx(expected, rel=1e-5, abs=1e-7)
        _, ours_modified = loss.entry_losses(tf.constant(labels), tf.constant(logits))
        np.testing.assert_array_equal(ours_modified.numpy(), modified)
        assert modified.any() == (epoch > 1)


def test_ll_modifies_every_entry_tied_with_the_threshold():
    """k = 2 of 8 entries, but four unannotated entries share the largest loss: all four are rejected."""
    labels = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32)
    logits = np.array([[3.0, 2.0, 2.0, -1.0], [2.0, 2.0, -3.0, 0.5]], np.float32)
    loss = losses.get("ll_r", ll_delta=25.0)  # epoch 2: 25% of 8 entries
    loss.set_epoch(2, 10)
    expected, modified = ll_reference(labels, logits.astype(np.float64), 2, 25.0, "reject")
    assert modified.sum() == 4
    _, ours = loss.entry_losses(tf.constant(labels), tf.constant(logits))
    np.testing.assert_array_equal(ours.numpy(), modified)
    assert float(tf.reduce_mean(loss(labels, logits))) == pytest.approx(expected, rel=1e-6)


def test_ll_rate_accumulates_as_the_authors_float_does():
    """delta 0.5, 16 x 80 entries, epoch 6: exactly 2.5% is 32 entries, the authors' float subtraction gives 33."""
    rate = losses.ll_rejection_rate(6, 0.5)
    assert math.ceil(16 * 80 * 0.025) == 32 and math.ceil(16 * 80 * rate) == 33
    loss = losses.get("ll_r", ll_delta=0.5)
    loss.set_epoch(6, 10)
    labels = np.zeros((16, 80), np.float32)
    logits = np.linspace(-3, 3, 16 * 80).reshape(16, 80).astype(np.float32)  # distinct losses, no ties
    _, modified = loss.entry_losses(tf.constant(labels), tf.constant(logits))
    assert int(modified.numpy().sum()) == 33


def test_ll_cp_writes_its_corrections_into_the_bank_at_the_end_of_the_epoch():
    labels, logits = _batch(5)
    labels[labels == -1] = 0
    bank = LabelBank(np.concatenate([np.zeros((4, 10), np.float32), labels]))  # the batch is rows 4..19
    loss = losses.get("ll_cp", ll_delta=5.0)
    loss.attach(bank)
    loss.set_epoch(2, 10)
    index = np.arange(4, 20, dtype=np.float32)
    ours = losses.LabelBankLoss(loss, bank)(index, logits)
    expected, modified = ll_reference(labels, logits.astype(np.float64), 2, 5.0, "permanent")
    assert float(ours) == pytest.approx(expected, rel=1e-5)
    assert modified.sum() == math.ceil(16 * 10 * 0.05)
    np.testing.assert_array_equal(bank.numpy()[4:], labels)  # nothing written during the epoch
    assert loss.apply_corrections() == modified.sum()
    np.testing.assert_array_equal(bank.numpy()[4:], np.where(modified, 1.0, labels))
    assert not bank.numpy()[:4].any() and not loss.corrections.numpy().any()


# --- BoostLU ----------------------------------------------------------------------------------------------------------


def test_boostlu_head_equals_conv_boost_then_average():
    rng = np.random.RandomState(0)
    feature_map = rng.normal(0, 1, (3, 4, 5, 6)).astype(np.float32)
    inputs = keras.Input((4, 5, 6))
    model = keras.Model(inputs, models.boostlu_head(inputs, 7, alpha=5.0))
    kernel, bias = rng.normal(0, 1, (1, 1, 6, 7)).astype(np.float32), rng.normal(0, 1, 7).astype(np.float32)
    model.get_layer("logits").set_weights([kernel, bias])
    cams = feature_map.astype(np.float64) @ kernel[0, 0].astype(np.float64) + bias  # the 1x1 convolution
    expected = np.where(cams > 0, 5.0 * cams, cams).mean(axis=(1, 2))  # torch.where(CAM > 0, CAM * alpha, CAM); GAP
    np.testing.assert_allclose(model(feature_map).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_boostlu_is_part_of_the_built_model_and_its_plain_keras_copy():
    config = config_lib.from_overrides("digits", head="boostlu", image_size=16)
    model = models.build_model(config, 10, log=lambda line: None)
    assert isinstance(model.get_layer("logits"), keras.layers.Conv2D) and model.get_layer("boostlu")
    images = np.random.RandomState(1).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    saved = models.for_saving(model)
    np.testing.assert_allclose(saved(images).numpy(), model(images).numpy(), atol=1e-6)


# --- GR ---------------------------------------------------------------------------------------------------------------


def gr_reference(labels, logits, w, b, mu, sigma, q2, q3):
    """The authors' GR_loss restated (float64): mean of the per-entry losses; entries other than 0 / 1 count 0
    there, here -1 is a known negative (-log(1 - p)), as for every loss of this project."""
    p = _sigmoid(logits)
    k = 1.0 / (1.0 + np.exp(-(w * p + b)))
    v = np.exp(-0.5 * ((p - mu) / sigma) ** 2)
    loss1, loss2 = (1 - p ** q2) / q2, (1 - (1 - p) ** q3) / q3
    loss = np.where(labels == 1, -np.log(p + 1e-7), 0.0)
    loss = np.where(labels == 0, v * (k * loss1 + (1 - k) * loss2), loss)
    loss = np.where(labels == -1, -np.log(1 - p), loss)
    return loss.mean()


def test_gr_schedules_epoch_by_epoch_as_the_authors_train_py():
    # train.py with linear_init n = 0, T = 8 epochs, the defaults beta=[0, 2, -2, -2], alpha=[0.5, 2, 0.8, 0.5]:
    # w = w0 + (wT - w0) max(e - n - 1, 0) / (T - n); mu = mu0 + (muT - mu0) max(e - n, 0) / (T - n).
    for epoch in range(1, 9):
        w, b, mu, sigma = losses.gr_schedule(epoch, 8, (0, 2), (-2, -2), (0.5, 0.8), (2, 0.5))
        assert w == pytest.approx(0.25 * (epoch - 1)) and b == -2
        assert mu == pytest.approx(0.5 + 0.0375 * epoch) and sigma == pytest.approx(2 - 0.1875 * epoch)
    assert losses.gr_schedule(8, 8, (0, 2), (-2, -2), (0.5, 0.8), (2, 0.5))[0] == 1.75  # never reaches 2
    assert losses.gr_schedule(3, 6, (0, 2), (0, 0), (0, 1), (1, 1), linear_init=2) == (0.0, 0.0, 0.25, 1.0)


@pytest.mark.parametrize("epoch", [1, 4, 8])
def test_gr_equals_the_authors_loss(epoch):
    loss = losses.get("gr")
    loss.set_epoch(epoch, 8)
    w, b, mu, sigma = losses.gr_schedule(epoch, 8, (0, 2), (-2, -2), (0.5, 0.8), (2, 0.5))
    for seed in range(3):
        labels, logits = _batch(seed)
        expected = gr_reference(labels, logits.astype(np.float64), w, b, mu, sigma, 0.01, 1.0)
        assert float(tf.reduce_mean(loss(labels, logits))) == pytest.approx(expected, rel=1e-5)


def test_gr_takes_no_gradient_through_k_and_v():
    """d/dz of v0 [k0 L1(p) + (1 - k0) L2(p)] with k0, v0 held at their values: the authors' preds.detach()."""
    loss = losses.get("gr")
    loss.set_epoch(5, 8)
    w, b, mu, sigma = (float(x) for x in loss.schedule.numpy())
    z = np.array([[-1.5, 0.3, 2.0]], np.float32)
    variable = tf.Variable(z)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss.unannotated_term(variable))
    ours = tape.gradient(value, variable).numpy()
    p0 = _sigmoid(z.astype(np.float64))
    k0, v0 = 1 / (1 + np.exp(-(w * p0 + b))), np.exp(-0.5 * ((p0 - mu) / sigma) ** 2)

    def frozen(zz):
        p = _sigmoid(zz)
        return v0 * (k0 * (1 - p ** 0.01) / 0.01 + (1 - k0) * (1 - (1 - p) ** 1.0))

    h = 1e-5
    z64 = z.astype(np.float64)
    numeric = (frozen(z64 + h) - frozen(z64 - h)) / (2 * h)
    np.testing.assert_allclose(ours, numeric, rtol=1e-3, atol=1e-6)


def test_gr_apl_adds_aplss_soft_bce_on_pseudo_negatives():
    labels = np.array([[1.0, 0.0, -0.3, -1.0]], np.float32)
    logits = np.array([[0.5, -0.2, 0.7, -1.0]], np.float32)
    gr, gr_apl = losses.get("gr"), losses.get("gr_apl", beta=0.5)
    base = float(gr(labels, logits)) * 4  # the sum of the entries (mean over 4 classes)
    pseudo = 0.5 * _bce(0.7, 0.3)
    assert float(gr_apl(labels, logits)) * 4 == pytest.approx(base + pseudo, rel=1e-5)


# --- Optimizers -------------------------------------------------------------------------------------------------------


def _two_layer_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(2, name="logits")])
    model.set_weights([np.full(w.shape, 0.5, np.float32) for w in model.get_weights()])
    return model


def _steps(optimizer, model, gradients):
    for step in gradients:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step], model.trainable_variables))
    return [np.asarray(v) for v in model.trainable_variables]


def _gradients(model, count=4):
    rng = np.random.RandomState(0)
    return [[rng.normal(0, 1, v.shape).astype(np.float32) for v in model.trainable_variables] for _ in range(count)]


def test_torch_sgd_with_momentum_coupled_weight_decay_and_the_head_at_10x():
    model = _two_layer_model()
    gradients = _gradients(model)
    ours = _steps(optimizers.TorchSGD(0.01, momentum=0.9, torch_weight_decay=1e-3, head_lr_mult=10.0), model,
                  gradients)
    # torch.optim.SGD: g += wd p; buf = g (first step) else momentum buf + g; p -= lr buf; the head a group of its own.
    params = [np.full(g.shape, 0.5) for g in gradients[0]]
    buffers = [None] * len(params)
    rates = [0.01, 0.01, 0.1, 0.1]  # hidden kernel, bias; logits kernel, bias
    for step in gradients:
        for i, g in enumerate(step):
            g = g + 1e-3 * params[i]
            buffers[i] = g if buffers[i] is None else 0.9 * buffers[i] + g
            params[i] = params[i] - rates[i] * buffers[i]
    for a, b in zip(ours, params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_adam_steps_the_head_at_its_multiple():
    """The head's trajectory with head_lr_mult 10 is the trajectory of Adam at 10x the learning rate."""
    gradients = _gradients(_two_layer_model())
    with_mult = _steps(optimizers.TorchAdam(1e-3, head_lr_mult=10.0), _two_layer_model(), gradients)
    plain = _steps(optimizers.TorchAdam(1e-3), _two_layer_model(), gradients)
    ten_times = _steps(optimizers.TorchAdam(1e-2), _two_layer_model(), gradients)
    for i in (0, 1):
        np.testing.assert_array_equal(with_mult[i], plain[i])
    for i in (2, 3):
        np.testing.assert_allclose(with_mult[i], ten_times[i], rtol=1e-6)


def test_the_trainer_picks_the_configured_optimizer():
    sgd = train.make_optimizer(config_lib.from_overrides("voc", loss="ll_r"))
    assert isinstance(sgd, optimizers.TorchSGD) and sgd.head_lr_mult == 10.0 and sgd.torch_weight_decay == 1e-3
    adam = train.make_optimizer(config_lib.from_overrides("coco", loss="gr"))
    assert isinstance(adam, optimizers.TorchAdam) and adam.head_lr_mult == 10.0


# --- Presets ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, dataset, expected", [
    ("ll_r", "voc", dict(optimizer="sgd", learning_rate=5e-3, ll_delta=0.2, batch_size=16, head_lr_mult=10.0,
                         max_map_drop=3.0)),
    ("ll_cp", "voc", dict(optimizer="sgd", ll_delta=0.1)),
    ("ll_r", "coco", dict(optimizer="adam", learning_rate=1e-5, ll_delta=0.4)),
    ("ll_ct", "nuswide", dict(learning_rate=1e-5, ll_delta=0.2)),
    ("ll_ct", "cub", dict(learning_rate=7.5e-5, ll_delta=0.4)),
    ("ll_cp", "cub", dict(ll_delta=0.2)),
    ("gr", "voc", dict(batch_size=8, learning_rate=1e-5, epochs=8, head_lr_mult=10.0, max_map_drop=2.0)),
    ("em_apl", "voc", dict(batch_size=8, learning_rate=1e-5, head_lr_mult=1.0, head="linear")),
])
def test_each_method_trains_with_its_authors_preset(loss, dataset, expected):
    config = config_lib.from_overrides(dataset, loss=loss)
    assert {key: getattr(config, key) for key in expected} == expected


def test_boostlu_presets_and_flags_win():
    config = config_lib.from_overrides("coco", loss="ll_r", head="boostlu")
    assert (config.ll_delta, config.learning_rate, config.boostlu_alpha, config.head_lr_mult) == (0.5, 1e-5, 5.0, 10.0)
    assert config_lib.from_overrides("voc", loss="ll_r", ll_delta=0.3).ll_delta == 0.3
    assert config_lib.from_overrides("digits", loss="ll_r").learning_rate == 1e-3  # digits keeps its protocol


def test_bad_method_settings_are_one_line():
    with pytest.raises(UsageError, match="--head='mlp' is not one of linear, boostlu"):
        config_lib.from_overrides("digits", head="mlp")
    with pytest.raises(UsageError, match="--gr_w=1.0 takes two numbers: first,last"):
        config_lib.from_overrides("digits", gr_w=(1.0,))
    with pytest.raises(UsageError, match="--warmup_epochs=5 must be smaller than --epochs=3 with --loss=gr_apl"):
        losses.for_config(config_lib.from_overrides("digits", loss="gr_apl", epochs=3))
