"""The typed training configuration and the per-dataset presets (SPEC section 4)."""

import dataclasses
import os

from spml_tf.errors import UsageError

DATASETS = ("digits", "voc", "coco", "nuswide", "cub")
LOSSES = ("full", "an", "em", "em_apl")
BACKBONES = ("resnet50", "small_cnn")

# Seed of the single-positive observation process and of the train/val split:
# fixed by the original code, so our observed labels equal its files.
OBSERVATION_SEED = 1200
VAL_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Presets below are plain instances."""

    dataset: str = "digits"
    data_dir: str = ""  # "" = the default cache directory of the dataset
    model_dir: str = ""  # "" = runs/<dataset>-<loss>-<time>
    loss: str = "em_apl"
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-5
    alpha: float = 0.2  # weight of the entropy term on unannotated labels
    beta: float = 0.02  # weight of the soft BCE on APL pseudo-negatives
    warmup_epochs: int = 5  # APL runs after every epoch >= warmup_epochs
    neg_proportion: float = 0.9  # theta: share of unannotated labels APL turns negative
    backbone: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    freeze_backbone: bool = False
    image_size: int = 448
    random_flip: bool = True
    seed: int = 1
    patience: int = 0  # the paper stops at the first epoch whose val mAP does not improve
    threshold: float = 0.75  # for F1; the authors' recommendation for EM-trained models

    def __post_init__(self):
        _check(self.dataset in DATASETS, f"--dataset={self.dataset!r} is not one of {', '.join(DATASETS)}")
        _check(self.loss in LOSSES, f"--loss={self.loss!r} is not one of {', '.join(LOSSES)}")
        _check(self.backbone in BACKBONES, f"--backbone={self.backbone!r} is not one of {', '.join(BACKBONES)}")
        _check(self.epochs >= 1, f"--epochs={self.epochs} must be at least 1")
        _check(self.batch_size >= 1, f"--batch_size={self.batch_size} must be at least 1")
        _check(self.learning_rate > 0, f"--learning_rate={self.learning_rate} must be positive")
        _check(self.alpha >= 0, f"--alpha={self.alpha} must be >= 0")
        _check(self.beta >= 0, f"--beta={self.beta} must be >= 0")
        _check(0 < self.neg_proportion <= 1, f"--neg_proportion={self.neg_proportion} must be in (0, 1]")
        _check(self.warmup_epochs >= 1, f"--warmup_epochs={self.warmup_epochs} must be at least 1")
        if self.loss == "em_apl":
            _check(
                self.warmup_epochs < self.epochs,
                f"--warmup_epochs={self.warmup_epochs} must be smaller than --epochs={self.epochs} "
                "with --loss=em_apl, or APL never runs",
            )
        _check(self.image_size >= 8, f"--image_size={self.image_size} must be at least 8")
        _check(self.patience >= 0, f"--patience={self.patience} must be >= 0")
        _check(0 < self.threshold < 1, f"threshold={self.threshold} must be in (0, 1)")
        if self.weights not in ("imagenet", "none"):
            _check(os.path.isfile(self.weights), f"--weights={self.weights!r} is neither 'imagenet', 'none' nor a file")
        if self.backbone == "small_cnn":
            _check(self.weights == "none", "--backbone=small_cnn has no pretrained weights: use --weights=none")

    @property
    def apl_rounds(self):
        """Number of APL rounds that can still affect training (SPEC: T_t - T_w)."""
        return self.epochs - self.warmup_epochs


def _check(condition, message):
    if not condition:
        raise UsageError(message)


# SPEC section 4: (batch, lr, alpha, beta, T_w) per dataset; ResNet-50 at 448x448
# from ImageNet weights, Adam, 10 epochs, theta = 0.9.
_PAPER = Config(backbone="resnet50", weights="imagenet", image_size=448, epochs=10, neg_proportion=0.9)
PRESETS = {
    "voc": dataclasses.replace(_PAPER, dataset="voc", batch_size=8, learning_rate=1e-5, alpha=0.2, beta=0.02, warmup_epochs=5),
    "coco": dataclasses.replace(_PAPER, dataset="coco", batch_size=16, learning_rate=1e-5, alpha=0.1, beta=0.9, warmup_epochs=5),
    "nuswide": dataclasses.replace(_PAPER, dataset="nuswide", batch_size=16, learning_rate=1e-5, alpha=0.1, beta=0.2, warmup_epochs=4),
    "cub": dataclasses.replace(_PAPER, dataset="cub", batch_size=8, learning_rate=1e-4, alpha=0.01, beta=0.4, warmup_epochs=3),
    # The embedded dataset: 32x32 digit mosaics and a small CNN trained from
    # scratch, so it runs on a laptop CPU in minutes. No flip: a mirrored digit
    # is a different glyph, not the same class seen from another side.
    "digits": Config(
        dataset="digits", backbone="small_cnn", weights="none", image_size=32, random_flip=False,
        batch_size=32, learning_rate=1e-3, alpha=0.2, beta=0.02, epochs=10, warmup_epochs=5,
    ),
}


def from_overrides(dataset, **overrides):
    """The preset of `dataset` with every explicitly given value replacing the preset's."""
    if dataset not in PRESETS:
        raise UsageError(f"--dataset={dataset!r} is not one of {', '.join(DATASETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise UsageError(f"unknown config fields: {', '.join(sorted(unknown))}")
    return dataclasses.replace(PRESETS[dataset], **overrides)
