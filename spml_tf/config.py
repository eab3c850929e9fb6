"""The typed training configuration and the per-dataset presets (docs/method.md section 4).

Importing it costs no TensorFlow: the command lines check their flags with it first.
"""

import dataclasses
import math
import os

from spml_tf.errors import UsageError

DATASETS = ("digits", "voc", "coco", "nuswide", "cub", "custom")
LABEL_VARIANTS = ("observed", "clean")
BACKBONES = ("resnet50", "keras_resnet50", "small_cnn")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
MIXED_PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
HEADS = ("linear", "boostlu")
OPTIMIZERS = ("adam", "sgd")

# Seed of the single-positive observation process and of the train/val split:
# fixed by the original code, so our observed labels equal its files.
OBSERVATION_SEED = 1200
VAL_FRACTION = 0.2
# Probability from which a class counts as predicted (F1 in results, `labels` of the exported model): the
# authors' recommendation for EM-trained models, whose probabilities on unannotated labels sit near 0.5.
THRESHOLD = 0.75


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Presets below are plain instances."""

    dataset: str = "digits"
    data_dir: str = ""  # "" = the default cache directory of the dataset
    model_dir: str = ""  # "" = runs/<dataset>-<loss>-<time>
    loss: str = "em_apl"  # a name of losses.LOSSES, checked when training starts (losses.for_config)
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-5
    alpha: float = 0.2  # weight of the entropy term on unannotated labels
    beta: float = 0.02  # weight of the soft BCE on APL pseudo-negatives
    warmup_epochs: int = 5  # APL runs after every epoch >= warmup_epochs
    neg_proportion: float = 0.9  # theta: share of unannotated labels APL turns negative
    ls_coef: float = 0.1  # label smoothing of an_ls
    expected_num_pos: float = 1.5  # k of epr and role: the mean number of positives per image
    observed_negatives: int = 0  # negatives kept per image by the observation process (Cole et al.'s num_neg)
    train_set_variant: str = "observed"  # "clean": train on full labels (then `an` is `full`)
    val_set_variant: str = "clean"  # "observed": select epochs on single-positive val labels
    backbone: str = "resnet50"  # torchvision's ResNet-50, the paper's network (resnet.py)
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file (pretrained.py)
    freeze_backbone: bool = False
    image_size: int = 448
    random_flip: bool = True
    seed: int = 1
    patience: int = 0  # the paper stops at the first epoch whose val mAP does not improve
    threshold: float = THRESHOLD
    deterministic: bool = False  # op determinism and ordered input: bit-identical reruns, a little slower
    strategy: str = "auto"  # auto: mirrored over every visible GPU when there are several, else one device
    mixed_precision: str = "none"  # or a Keras mixed policy; logits, losses and metrics stay float32
    jit_compile: bool = False  # XLA-compile the training step
    worker_timeout: float = 300.0  # multi_worker: seconds to wait for every worker to start
    # The methods after the paper (docs/method.md section 7) and their protocols.
    head: str = "linear"  # "boostlu": 1x1 conv to class activation maps, positives x boostlu_alpha, then GAP
    boostlu_alpha: float = 5.0
    head_lr_mult: float = 1.0  # the head's learning rate is this times --learning_rate (LL, BoostLU, GR: 10)
    optimizer: str = "adam"  # torch's Adam; "sgd": torch's SGD with momentum and (coupled) weight decay
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # sgd only, as torch adds it to the gradient
    ll_delta: float = 0.2  # LL: percent of the batch's label entries rejected / corrected more each epoch
    gr_w: tuple = (0.0, 2.0)  # GR: k(p) = sigmoid(w p + b), w and b from their first to their last value
    gr_b: tuple = (-2.0, -2.0)
    gr_mu: tuple = (0.5, 0.8)  # GR: v(p) = exp(-(p - mu)^2 / (2 sigma^2))
    gr_sigma: tuple = (2.0, 0.5)
    gr_q: tuple = (0.01, 1.0)  # GR: q2 and q3 of L1 and L2
    max_map_drop: float = 0.0  # > 0: stop when val mAP falls more than this below its best (patience then unused)

    def __post_init__(self):
        for name in ("gr_w", "gr_b", "gr_mu", "gr_sigma", "gr_q"):
            value = getattr(self, name)
            _check(len(value) == 2, f"--{name} takes two numbers (first, last), got {list(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))  # JSON gives lists back
        # Every number finite, first: inf passes checks such as `alpha >= 0`, and nan fails every comparison.
        for field in dataclasses.fields(self):
            if field.type in (int, float, tuple):
                value = getattr(self, field.name)
                numbers = value if field.type is tuple else (value,)
                # An int is finite (and may be too large for a float, which math.isfinite would need).
                _check(all(isinstance(number, int) or math.isfinite(number) for number in numbers),
                       f"--{field.name}={','.join(map(str, numbers))} must be finite, not inf or nan")
        _check(self.dataset in DATASETS, f"--dataset={self.dataset!r} is not one of {', '.join(DATASETS)}")
        _check(self.train_set_variant in LABEL_VARIANTS,
               f"--train_set_variant={self.train_set_variant!r} is not one of {', '.join(LABEL_VARIANTS)}")
        _check(self.val_set_variant in LABEL_VARIANTS,
               f"--val_set_variant={self.val_set_variant!r} is not one of {', '.join(LABEL_VARIANTS)}")
        _check(0 <= self.ls_coef < 0.5, f"--ls_coef={self.ls_coef} must be in [0, 0.5)")
        _check(self.expected_num_pos > 0, f"--expected_num_pos={self.expected_num_pos} must be positive")
        _check(self.observed_negatives >= 0, f"--observed_negatives={self.observed_negatives} must be >= 0")
        _check(self.backbone in BACKBONES, f"--backbone={self.backbone!r} is not one of {', '.join(BACKBONES)}")
        _check(self.epochs >= 1, f"--epochs={self.epochs} must be at least 1")
        _check(self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1")
        _check(self.learning_rate > 0, f"--learning_rate={self.learning_rate} must be positive")
        _check(self.alpha >= 0, f"--alpha={self.alpha} must be >= 0")
        _check(self.beta >= 0, f"--beta={self.beta} must be >= 0")
        _check(0 < self.neg_proportion <= 1, f"--neg_proportion={self.neg_proportion} must be in (0, 1]")
        _check(self.warmup_epochs >= 1, f"--warmup_epochs={self.warmup_epochs} must be at least 1")
        _check(self.image_size >= 8, f"--image_size={self.image_size} must be at least 8")
        _check(self.patience >= 0, f"--patience={self.patience} must be >= 0")
        _check(0 < self.threshold < 1, f"threshold={self.threshold} must be in (0, 1)")
        _check(self.strategy in STRATEGIES, f"--strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        _check(self.mixed_precision in MIXED_PRECISIONS,
               f"--mixed_precision={self.mixed_precision!r} is not one of {', '.join(MIXED_PRECISIONS)}")
        _check(self.worker_timeout > 0, f"--worker_timeout={self.worker_timeout} must be positive (seconds)")
        _check(self.head in HEADS, f"--head={self.head!r} is not one of {', '.join(HEADS)}")
        _check(self.boostlu_alpha >= 1, f"--boostlu_alpha={self.boostlu_alpha} must be at least 1")
        _check(self.head_lr_mult > 0, f"--head_lr_mult={self.head_lr_mult} must be positive")
        _check(self.optimizer in OPTIMIZERS, f"--optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        _check(0 <= self.momentum < 1, f"--momentum={self.momentum} must be in [0, 1)")
        _check(self.weight_decay >= 0, f"--weight_decay={self.weight_decay} must be >= 0")
        _check(0 <= self.ll_delta <= 100, f"--ll_delta={self.ll_delta} must be a percentage in [0, 100]")
        _check(self.max_map_drop >= 0, f"--max_map_drop={self.max_map_drop} must be >= 0")
        _check(min(self.gr_sigma) > 0, f"--gr_sigma={list(self.gr_sigma)} must be positive")
        _check(min(self.gr_q) > 0, f"--gr_q={list(self.gr_q)} must be positive")
        if self.weights not in ("imagenet", "none"):
            _check(os.path.isfile(self.weights), f"--weights={self.weights!r} is neither 'imagenet', 'none' nor a file")
        if self.backbone == "small_cnn":
            _check(self.weights == "none", "--backbone=small_cnn has no pretrained weights: use --weights=none")


def _check(condition, message):
    if not condition:
        raise UsageError(message)


# docs/method.md section 4: (batch, lr, alpha, beta, T_w) per dataset; torchvision's
# ResNet-50 at 448x448 from its ImageNet weights, Adam (torch's), 10 epochs, theta = 0.9.
# expected_num_pos: the mean positives per image that EPR and ROLE assume (docs/method.md section 2).
_PAPER = Config(backbone="resnet50", weights="imagenet", image_size=448, epochs=10, neg_proportion=0.9)
PRESETS = {
    "voc": dataclasses.replace(_PAPER, dataset="voc", batch_size=8, learning_rate=1e-5, alpha=0.2, beta=0.02,
                               warmup_epochs=5, expected_num_pos=1.5),
    "coco": dataclasses.replace(_PAPER, dataset="coco", batch_size=16, learning_rate=1e-5, alpha=0.1, beta=0.9,
                                warmup_epochs=5, expected_num_pos=2.9),
    "nuswide": dataclasses.replace(_PAPER, dataset="nuswide", batch_size=16, learning_rate=1e-5, alpha=0.1,
                                   beta=0.2, warmup_epochs=4, expected_num_pos=1.9),
    "cub": dataclasses.replace(_PAPER, dataset="cub", batch_size=8, learning_rate=1e-4, alpha=0.01, beta=0.4,
                               warmup_epochs=3, expected_num_pos=31.4),
    # A user's own data (converted with --dataset=csv or formatted): the
    # paper's recipe with VOC's weights, a sound start for a new dataset.
    # theta must stay below the share of true negatives among unannotated
    # labels (see digits below): 0.9 suits datasets with few positives per image.
    "custom": dataclasses.replace(_PAPER, dataset="custom", batch_size=8, learning_rate=1e-5, alpha=0.2, beta=0.02,
                                  warmup_epochs=5, expected_num_pos=1.5),
    # The embedded dataset: 24x24 digit mosaics and a small CNN trained from
    # scratch, so it runs on a laptop CPU in minutes. No flip: a mirrored digit
    # is a different glyph, not the same class seen from another side.
    # theta 0.5, not 0.9: APL turns theta of the unannotated labels negative,
    # so theta must stay below the share of true negatives among them. That is
    # 97% on VOC (1.5 positives of 20) but 67% here (4 of 10): theta 0.9 made
    # a quarter of the pseudo-negatives false (74% precision, measured).
    # Patience 3, not the paper's 0: the paper fine-tunes a pretrained network
    # whose val mAP rises from the first epoch; from scratch the first epochs
    # are noisy, and patience 0 stopped runs at epoch 2 (wan: 56 mAP, epr: 47).
    "digits": Config(
        dataset="digits", backbone="small_cnn", weights="none", image_size=24, random_flip=False,
        batch_size=32, learning_rate=1e-3, alpha=0.2, beta=0.02, epochs=10, warmup_epochs=5, patience=3,
        neg_proportion=0.5,
        expected_num_pos=4.0,  # the true mean: 2 to 6 classes per image, uniformly
    ),
}


# The protocols of the methods after the paper, as their authors' code runs them (docs/method.md section 7):
# what differs from the dataset's preset above, per loss (and per head for BoostLU), per dataset.
#
# LL (snucml/LargeLossMatters, config.py and train.py): batch 16, 10 epochs, the head at 10x the learning rate
# (`lr_mult`), Adam; stop when val mAP falls more than 3 below its best (train.py: `bestmap_val - map_val > 3`).
# Per dataset the optimizer, learning rate and delta are the first author's answer in that repository's issue
# #4 (the code has no per-dataset values): VOC SGD 5e-3 (momentum 0.9, weight decay 1e-3: config.py / train.py),
# COCO and NUS-WIDE Adam 1e-5, CUB Adam 7.5e-5; delta R / Ct / Cp: VOC 0.2 / 0.2 / 0.1, COCO and NUS-WIDE
# 0.4 / 0.2 / 0.2, CUB 0.4 / 0.4 / 0.2.
_LL = dict(batch_size=16, epochs=10, head_lr_mult=10.0, max_map_drop=3.0)
_LL_DATA = {
    "voc": dict(optimizer="sgd", learning_rate=5e-3, momentum=0.9, weight_decay=1e-3),
    "coco": dict(learning_rate=1e-5),
    "nuswide": dict(learning_rate=1e-5),
    "cub": dict(learning_rate=7.5e-5),
}
_LL_DELTA = {"ll_r": dict(voc=0.2, coco=0.4, nuswide=0.4, cub=0.4),
             "ll_ct": dict(voc=0.2, coco=0.2, nuswide=0.2, cub=0.4),
             "ll_cp": dict(voc=0.1, coco=0.2, nuswide=0.2, cub=0.2)}
# BoostLU (youngwk/BridgeGapExplanationPAMC, config.py): the same for every dataset: Adam 1e-5, batch 16,
# 10 epochs, lr_mult 10, alpha 5, delta R / Ct / Cp 0.5 / 0.2 / 0.1, no early stopping.
_BOOSTLU = dict(optimizer="adam", learning_rate=1e-5, batch_size=16, epochs=10, head_lr_mult=10.0,
                boostlu_alpha=5.0, max_map_drop=0.0, patience=10)
_BOOSTLU_DELTA = {"ll_r": 0.5, "ll_ct": 0.2, "ll_cp": 0.1}
# GR (yan4xi1/GRLoss, config.py and train.py): batch 8, Adam 1e-5, lr_mult 10, 8 epochs, the schedules above,
# q = (0.01, 1); stop when val mAP falls more than 2 below its best. No per-dataset values in that code.
_GR = dict(batch_size=8, learning_rate=1e-5, head_lr_mult=10.0, epochs=8, max_map_drop=2.0)
PAPER_DATASETS = ("voc", "coco", "nuswide", "cub")


def method_preset(loss, head, dataset):
    """The fields the authors' protocol of `loss` (with `head`) sets on `dataset` ({} where the dataset preset
    stands: the paper's methods, and every method on digits and custom data, whose protocol is the dataset's)."""
    if dataset not in PAPER_DATASETS:
        return {}
    if head == "boostlu" and loss in _BOOSTLU_DELTA:
        return {**_BOOSTLU, "ll_delta": _BOOSTLU_DELTA[loss]}
    if loss in _LL_DELTA:
        return {**_LL, **_LL_DATA[dataset], "ll_delta": _LL_DELTA[loss][dataset]}
    if loss in ("gr", "gr_apl"):
        return dict(_GR)
    return {}


def from_overrides(dataset, **overrides):
    """The preset of `dataset`, then its loss's protocol (method_preset), then every explicitly given value."""
    if dataset not in PRESETS:
        raise UsageError(f"--dataset={dataset!r} is not one of {', '.join(DATASETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise UsageError(f"unknown config fields: {', '.join(sorted(unknown))}")
    preset = PRESETS[dataset]
    method = method_preset(overrides.get("loss", preset.loss), overrides.get("head", preset.head), dataset)
    return dataclasses.replace(preset, **{**method, **overrides})
