"""The typed config: presets from docs/method.md section 4, overrides, and validation."""

import dataclasses

import pytest

from spml_tf import config as config_lib
from spml_tf.core.errors import UsageError


@pytest.mark.parametrize("dataset, batch, lr, alpha, beta, warmup", [
    ("voc", 8, 1e-5, 0.2, 0.02, 5),
    ("coco", 16, 1e-5, 0.1, 0.9, 5),
    ("nuswide", 16, 1e-5, 0.1, 0.2, 4),
    ("cub", 8, 1e-4, 0.01, 0.4, 3),
])
def test_paper_presets(dataset, batch, lr, alpha, beta, warmup):
    config = config_lib.PRESETS[dataset]
    assert (config.batch_size, config.learning_rate, config.alpha, config.beta, config.warmup_epochs) == (
        batch, lr, alpha, beta, warmup)
    assert (config.backbone, config.weights, config.image_size, config.epochs) == ("resnet50", "imagenet", 448, 10)
    assert config.neg_proportion == 0.9 and config.patience == 0 and config.random_flip


def test_explicit_values_win_over_the_preset():
    config = config_lib.from_overrides("voc", learning_rate=3e-4, loss="em")
    assert config.learning_rate == 3e-4 and config.loss == "em"
    assert config.batch_size == 8 and config.dataset == "voc"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config_lib.PRESETS["voc"].batch_size = 3


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, "--batch_size=0"),
    ({"neg_proportion": 0.0}, "--neg_proportion"),
    ({"neg_proportion": 1.01}, "--neg_proportion"),
    ({"backbone": "vit"}, "--backbone='vit'"),
    ({"weights": "imagenet", "backbone": "small_cnn"}, "no pretrained weights"),
    ({"alpha": -0.1}, "--alpha"),
])
def test_invalid_values_name_the_flag(overrides, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_lib.from_overrides("digits", **overrides)


def test_warmup_may_equal_epochs_without_apl():
    assert config_lib.from_overrides("digits", loss="em", epochs=3, warmup_epochs=5).epochs == 3


def test_unknown_dataset_and_field():
    with pytest.raises(UsageError, match="--dataset"):
        config_lib.from_overrides("imagenet")
    with pytest.raises(UsageError, match="unknown config fields: colour"):
        config_lib.from_overrides("digits", colour="red")


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("field, value, shown", [
    ("alpha", INF, "inf"), ("alpha", NAN, "nan"), ("beta", INF, "inf"), ("learning_rate", INF, "inf"),
    ("worker_timeout", INF, "inf"), ("worker_timeout", NAN, "nan"), ("momentum", NAN, "nan"),
    ("boostlu_alpha", INF, "inf"), ("expected_num_pos", INF, "inf"), ("head_lr_mult", INF, "inf"),
    ("weight_decay", INF, "inf"), ("max_map_drop", INF, "inf"), ("ll_delta", NAN, "nan"), ("epochs", INF, "inf"),
    ("gr_w", (NAN, 2.0), "nan,2.0"), ("gr_b", (-2.0, -INF), "-2.0,-inf"), ("gr_mu", (0.5, INF), "0.5,inf"),
    ("gr_sigma", (2.0, NAN), "2.0,nan"), ("gr_q", (0.01, INF), "0.01,inf"),
])
def test_every_number_must_be_finite(field, value, shown):
    with pytest.raises(UsageError, match=f"^--{field}={shown} must be finite, not inf or nan$"):
        config_lib.from_overrides("digits", **{field: value})


def test_a_large_integer_is_not_mistaken_for_infinity():
    assert config_lib.from_overrides("digits", seed=10**400).seed == 10**400
