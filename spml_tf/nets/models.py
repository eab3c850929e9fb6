"""Classifiers: an image in [0, 255] -> C logits. Normalisation is the first layer."""

import warnings

import keras
import numpy as np

from spml_tf.nets import hub, pretrained, resnet
from spml_tf.core.errors import DataError, reason

# Keras's ResNet50 ImageNet weights were trained on caffe-style inputs: BGR,
# mean-subtracted, not scaled (not the torchvision normalisation of the
# original PyTorch code).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def caffe_preprocessing(name="normalize"):
    """RGB in [0, 255] -> BGR minus the ImageNet mean, as a frozen 1x1 convolution: a built-in layer, so a saved
    model loads with plain Keras (`safe_mode=True`, no class of ours). Exact: each output is one input times 1."""
    permutation = np.zeros((1, 1, 3, 3), np.float32)
    permutation[0, 0, [2, 1, 0], [0, 1, 2]] = 1.0  # output channel j takes input channel 2 - j
    return keras.layers.Conv2D(3, 1, name=name, trainable=False,
                               kernel_initializer=keras.initializers.Constant(permutation),
                               bias_initializer=keras.initializers.Constant(-np.asarray(CAFFE_BGR_MEAN)))


@keras.saving.register_keras_serializable(package="spml_tf")
class Normalize(keras.layers.Layer):
    """The normalisation layer of runs saved by spml-tf 0.1, kept so that their model.keras still loads here.
    New models use built-in layers (caffe_preprocessing, Rescaling)."""

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "unit"):
            raise ValueError(f"unknown normalisation {mode!r}")
        self.mode = mode

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "unit":
            return images / 255.0
        bgr = keras.ops.flip(images, axis=-1)
        return bgr - keras.ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def small_cnn(inputs, pooling=True):
    """A small VGG-style CNN for the embedded digits dataset and for tests (pooling=False: its last feature map)."""
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.GlobalAveragePooling2D()(x) if pooling else x


def boostlu_head(feature_map, num_classes, alpha, kernel_init="glorot_uniform", bias_init="zeros"):
    """BoostLU (Kim et al., CVPR 2023; docs/method.md section 7.2): a 1x1 convolution (with bias) to C class
    activation maps, every positive activation multiplied by alpha, then global average pooling to C logits.

    where(x > 0, alpha x, x) is written as alpha * LeakyReLU(slope 1 / alpha)(x), Keras's own layers, so that the
    saved model loads without this package (equal to within one float32 rounding of the negative side).
    """
    cams = keras.layers.Conv2D(num_classes, 1, dtype="float32", kernel_initializer=kernel_init,
                               bias_initializer=bias_init, name="logits")(feature_map)
    boosted = keras.layers.LeakyReLU(negative_slope=1.0 / alpha, dtype="float32", name="boostlu")(cams)
    boosted = keras.layers.Rescaling(alpha, dtype="float32", name="boostlu_alpha")(boosted)
    return keras.layers.GlobalAveragePooling2D(dtype="float32", name="cam_pool")(boosted)


def build_model(config, num_classes, log=print):
    """Backbone + global average pooling + a linear head to `num_classes` logits (the Dense named "logits"); or,
    with --head=boostlu, backbone feature map + the BoostLU head (its 1x1 convolution named "logits").

    resnet50: torchvision's ResNet-50 (resnet.py) on torchvision's
    normalisation, from torchvision's weights, with torch's initialisation of
    the linear head: the paper's network. keras_resnet50: keras.applications'
    ResNet50 (v1, caffe-style inputs, Keras's weights). small_cnn: the digits
    network. hub:<preset>: a KerasHub image backbone with its own preprocessing (hub.py).
    """
    inputs = keras.Input(shape=(config.image_size, config.image_size, 3), name="image")
    kernel_init, bias_init = "glorot_uniform", "zeros"  # Keras's defaults
    pooling = config.head == "linear"
    if config.backbone == "resnet50":
        normalized = resnet.imagenet_normalization()(inputs)
        backbone = resnet.resnet50(config.image_size, pooling=pooling)
        pretrained.load_resnet50(backbone, config.weights, log)
        kernel_init, bias_init = resnet.linear_head_initializers()
    elif config.backbone == "keras_resnet50":
        normalized = caffe_preprocessing()(inputs)
        weights = None if config.weights == "none" else config.weights  # "imagenet" or a file path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # a file missing layers is refused, not half loaded
                backbone = keras.applications.ResNet50(include_top=False, weights=weights,
                                                       pooling="avg" if pooling else None,
                                                       input_shape=(config.image_size, config.image_size, 3))
        except (OSError, ValueError, KeyError, UserWarning) as error:
            raise DataError(f"--weights={config.weights}: not weights of keras.applications' ResNet50 "
                            f"({reason(error)})") from None
    elif hub.is_hub(config.backbone):  # any KerasHub image backbone, its own preprocessing first (hub.py)
        backbone, converter = hub.load(hub.preset_of(config.backbone), config.image_size, config.weights != "none")
        backbone.trainable = not config.freeze_backbone
        features = hub.features(backbone, converter, inputs, pooling, False if config.freeze_backbone else None)
        backbone = None
    else:
        backbone = None
        features = small_cnn(keras.layers.Rescaling(1.0 / 255.0, name="normalize")(inputs), pooling)
    if backbone is not None:
        backbone.trainable = not config.freeze_backbone
        features = backbone(normalized, training=False if config.freeze_backbone else None)
    # Logits stay float32 under mixed precision: the losses need the precision.
    if config.head == "boostlu":  # torch's Conv2d initialisation is its Linear's, with fan-in C_in x 1 x 1
        logits = boostlu_head(features, num_classes, config.boostlu_alpha, kernel_init, bias_init)
        return keras.Model(inputs, logits, name=f"{_model_name(config.backbone)}_boostlu_spml")
    logits = keras.layers.Dense(num_classes, dtype="float32", kernel_initializer=kernel_init,
                                bias_initializer=bias_init, name="logits")(features)
    return keras.Model(inputs, logits, name=f"{_model_name(config.backbone)}_spml")


def _model_name(backbone):
    return "hub" if hub.is_hub(backbone) else backbone


def for_saving(model):
    """`model` with Keras's own layers only (resnet.BatchNorm becomes BatchNormalization, which computes the same
    at inference), its weights copied: what model.keras holds, loadable without this package."""
    def plain(layer):
        if isinstance(layer, resnet.BatchNorm):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    # Uncompiled (Keras would clone the compiled loss, which reads a label bank a user of the model does not have).
    uncompiled = keras.Model(model.input, model.output, name=model.name)
    if not any(isinstance(layer, resnet.BatchNorm) for layer in _all_layers(model)):
        return uncompiled
    clone = keras.models.clone_model(uncompiled, clone_function=plain, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
