"""The typed training configuration and the per-dataset presets (docs/method.md section 4).

`Config` has the run's own fields, declared here, and every method's hyper-parameters, declared by the method
families (spml_tf/methods: each `Hyperparameter` becomes a field of its name, its default and its check).
Presets are plain instances: a dataset's (the paper's recipe), then the chosen loss's protocol
(methods.protocol), then every value given.
"""

import dataclasses
import math
import os

from spml_tf import methods
from spml_tf.core.errors import UsageError
from spml_tf.data.labels import OBSERVATION_SEED, VAL_FRACTION  # noqa: F401  (fixed by the original code)
from spml_tf.training.metrics import THRESHOLD

from spml_tf import choices
from spml_tf.choices import (BACKBONES, DATASETS, HEADS, LABEL_VARIANTS, MIXED_PRECISIONS,  # noqa: F401
                             OPTIMIZERS, STRATEGIES)

# The run's own fields: (name, type, default). What each means is the help of its flag (spml_tf/train.py).
_RUN_FIELDS = (
    ("dataset", str, "digits"),
    ("data_dir", str, ""),  # "" = the default cache directory of the dataset
    ("model_dir", str, ""),  # "" = runs/<dataset>-<loss>-<time>
    ("loss", str, "em_apl"),  # a name of methods.LOSSES, checked when training starts (methods.for_config)
    ("epochs", int, 10),
    ("batch_size", int, 8),
    ("learning_rate", float, 1e-5),
    ("observed_negatives", int, 0),  # negatives kept per image by the observation process (Cole et al.'s num_neg)
    ("train_set_variant", str, "observed"),  # "clean": train on full labels (then `an` is `full`)
    ("val_set_variant", str, "clean"),  # "observed": select epochs on single-positive val labels
    ("backbone", str, "resnet50"),  # torchvision's ResNet-50, the paper's network (nets/resnet.py)
    ("weights", str, "imagenet"),  # "imagenet", "none" or a path to a weights file (nets/pretrained.py)
    ("freeze_backbone", bool, False),
    ("image_size", int, 448),
    ("random_flip", bool, True),
    ("seed", int, 1),
    ("patience", int, 0),  # the paper stops at the first epoch whose val mAP does not improve
    ("threshold", float, THRESHOLD),
    ("deterministic", bool, False),  # op determinism and ordered input: bit-identical reruns, a little slower
    ("strategy", str, "auto"),  # auto: mirrored over every visible GPU when there are several, else one device
    ("mixed_precision", str, "none"),  # or a Keras mixed policy; logits, losses and metrics stay float32
    ("jit_compile", bool, False),  # XLA-compile the training step
    ("worker_timeout", float, 300.0),  # multi_worker: seconds to wait for every worker to start
    ("head", str, "linear"),  # "boostlu": 1x1 conv to class activation maps, positives x boostlu_alpha, then GAP
    ("boostlu_alpha", float, 5.0),
    ("head_lr_mult", float, 1.0),  # the head's learning rate is this times --learning_rate (LL, BoostLU, GR: 10)
    ("optimizer", str, "adam"),  # torch's Adam; "sgd": torch's SGD with momentum and (coupled) weight decay
    ("momentum", float, 0.9),  # sgd only
    ("weight_decay", float, 0.0),  # sgd only, as torch adds it to the gradient
    ("max_map_drop", float, 0.0),  # > 0: also stop when val mAP falls more than this below its best
    ("vl_positives", str, "auto"),  # CLIP's pseudo-positives: auto (the loss's own rule, or none), none, vlpl, aevlp
    ("vl_scores", str, ""),  # "" = the one directory under <data_dir>/vl_scores (spml-vl-scores writes it)
)
# The order of the fields, and so of results.json's "config", as earlier versions wrote it (files compare line
# by line across versions); a method's new hyper-parameter comes after these.
_ORDER = ("dataset", "data_dir", "model_dir", "loss", "epochs", "batch_size", "learning_rate", "alpha", "beta",
          "warmup_epochs", "neg_proportion", "ls_coef", "expected_num_pos", "observed_negatives",
          "train_set_variant", "val_set_variant", "backbone", "weights", "freeze_backbone", "image_size",
          "random_flip", "seed", "patience", "threshold", "deterministic", "strategy", "mixed_precision",
          "jit_compile", "worker_timeout", "head", "boostlu_alpha", "head_lr_mult", "optimizer", "momentum",
          "weight_decay", "ll_delta", "gr_w", "gr_b", "gr_mu", "gr_sigma", "gr_q", "max_map_drop")


def _post_init(self):
    for name, parameter in methods.HYPERPARAMETERS.items():  # pairs as tuples of floats: JSON gives lists back
        if isinstance(parameter.default, tuple):
            value = getattr(self, name)
            _check(isinstance(value, (tuple, list)), f"--{name} takes two numbers: first,last")
            object.__setattr__(self, name, tuple(float(v) for v in value))
    # Every number finite, first: inf passes checks such as `alpha >= 0`, and nan fails every comparison.
    for field in dataclasses.fields(self):
        value = getattr(self, field.name)
        numbers = value if isinstance(value, tuple) else (value,)
        if all(isinstance(number, (int, float)) and not isinstance(number, bool) for number in numbers):
            # An int is finite (and may be too large for a float, which math.isfinite would need).
            _check(all(isinstance(number, int) or math.isfinite(number) for number in numbers),
                   f"--{field.name}={','.join(map(str, numbers))} must be finite, not inf or nan")
    choices.check("dataset", self.dataset)
    choices.check("train_set_variant", self.train_set_variant)
    choices.check("val_set_variant", self.val_set_variant)
    _check(self.observed_negatives >= 0, f"--observed_negatives={self.observed_negatives} must be >= 0")
    choices.check("backbone", self.backbone)
    _check(self.epochs >= 1, f"--epochs={self.epochs} must be at least 1")
    _check(self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1")
    _check(self.learning_rate > 0, f"--learning_rate={self.learning_rate} must be positive")
    _check(self.image_size >= 8, f"--image_size={self.image_size} must be at least 8")
    _check(self.patience >= 0, f"--patience={self.patience} must be >= 0")
    _check(0 < self.threshold < 1, f"threshold={self.threshold} must be in (0, 1)")
    choices.check("strategy", self.strategy)
    choices.check("mixed_precision", self.mixed_precision)
    _check(self.worker_timeout > 0, f"--worker_timeout={self.worker_timeout} must be positive (seconds)")
    choices.check("head", self.head)
    _check(self.boostlu_alpha >= 1, f"--boostlu_alpha={self.boostlu_alpha} must be at least 1")
    _check(self.head_lr_mult > 0, f"--head_lr_mult={self.head_lr_mult} must be positive")
    choices.check("optimizer", self.optimizer)
    choices.check("vl_positives", self.vl_positives)
    _check(0 <= self.momentum < 1, f"--momentum={self.momentum} must be in [0, 1)")
    _check(self.weight_decay >= 0, f"--weight_decay={self.weight_decay} must be >= 0")
    _check(self.max_map_drop >= 0, f"--max_map_drop={self.max_map_drop} must be >= 0")
    for name, parameter in methods.HYPERPARAMETERS.items():
        parameter.check(getattr(self, name))
    if self.backbone.startswith(choices.HUB_PREFIX):
        _check(len(self.backbone) > len(choices.HUB_PREFIX), "--backbone=hub: needs a preset: hub:<a KerasHub preset "
               "name, handle or directory>")
        _check(self.weights in ("imagenet", "none"), f"--weights={self.weights!r}: a hub backbone starts from its "
               "preset's weights (imagenet, the default) or from random ones (none)")
    if self.weights not in ("imagenet", "none"):
        _check(os.path.isfile(self.weights), f"--weights={self.weights!r} is neither 'imagenet', 'none' nor a file")
    if self.backbone == "small_cnn":
        _check(self.weights == "none", "--backbone=small_cnn has no pretrained weights: use --weights=none")


def _fields():
    declared = {name: (name, kind, default) for name, kind, default in _RUN_FIELDS}
    declared.update({name: (name, type(parameter.default), parameter.default)
                     for name, parameter in methods.HYPERPARAMETERS.items()})
    order = [name for name in _ORDER if name in declared] + [name for name in declared if name not in _ORDER]
    return [(name, kind, dataclasses.field(default=default)) for name, kind, default in map(declared.get, order)]


Config = dataclasses.make_dataclass(
    "Config", _fields(), frozen=True, namespace={"__post_init__": _post_init, "__module__": __name__,
                                                 "__doc__": "Everything a training run depends on."})


def _check(condition, message):
    if not condition:
        raise UsageError(message)


# docs/method.md section 4: per dataset the paper's batch and learning rate; torchvision's ResNet-50 at 448x448
# from its ImageNet weights, Adam (torch's), 10 epochs. The methods' hyper-parameters (EM's alpha, beta and
# warm-up, theta, EPR's k, ...) start from the per-dataset values their families declare.
_PAPER = dict(backbone="resnet50", weights="imagenet", image_size=448, epochs=10)
_PRESET_FIELDS = {
    "voc": dict(_PAPER, batch_size=8, learning_rate=1e-5),
    "coco": dict(_PAPER, batch_size=16, learning_rate=1e-5),
    "nuswide": dict(_PAPER, batch_size=16, learning_rate=1e-5),
    "cub": dict(_PAPER, batch_size=8, learning_rate=1e-4),
    # A user's own data (converted with --dataset=csv or formatted): the paper's recipe with VOC's values, a
    # sound start for a new dataset.
    "custom": dict(_PAPER, batch_size=8, learning_rate=1e-5),
    # The embedded dataset: 24x24 digit mosaics and a small CNN trained from scratch, so it runs on a laptop CPU
    # in minutes. No flip: a mirrored digit is a different glyph, not the same class seen from another side.
    # Patience 3, not the paper's 0: the paper fine-tunes a pretrained network whose val mAP rises from the
    # first epoch; from scratch the first epochs are noisy, and patience 0 stopped runs at epoch 2 (wan: 56 mAP,
    # epr: 47).
    "digits": dict(backbone="small_cnn", weights="none", image_size=24, random_flip=False, batch_size=32,
                   learning_rate=1e-3, epochs=10, patience=3),
}
PRESETS = {
    dataset: Config(dataset=dataset, **fields, **{name: parameter.per_dataset[dataset]
                                                  for name, parameter in methods.HYPERPARAMETERS.items()
                                                  if dataset in parameter.per_dataset})
    for dataset, fields in _PRESET_FIELDS.items()
}


def from_overrides(dataset, **overrides):
    """The preset of `dataset`, then its loss's protocol (methods.protocol), then every explicitly given value."""
    choices.check("dataset", dataset)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise UsageError(f"unknown config fields: {', '.join(sorted(unknown))}")
    preset = PRESETS[dataset]
    method = methods.protocol(overrides.get("loss", preset.loss), overrides.get("head", preset.head), dataset)
    return dataclasses.replace(preset, **{**method, **overrides})
