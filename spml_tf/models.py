"""Classifiers: an image in [0, 255] -> C logits. Normalisation is the first layer."""

import keras

# Keras's ResNet50 ImageNet weights were trained on caffe-style inputs: BGR,
# mean-subtracted, not scaled (not the torchvision normalisation of the
# original PyTorch code).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="spml_tf")
class Normalize(keras.layers.Layer):
    """'caffe': RGB -> BGR minus the ImageNet mean; 'unit': scale to [0, 1]."""

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


def small_cnn(inputs):
    """A small VGG-style CNN for the embedded digits dataset and for tests."""
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.GlobalAveragePooling2D()(x)


def build_model(config, num_classes):
    """Backbone + global average pooling + a linear head to `num_classes` logits."""
    inputs = keras.Input(shape=(config.image_size, config.image_size, 3), name="image")
    if config.backbone == "resnet50":
        normalized = Normalize("caffe", name="normalize")(inputs)
        weights = None if config.weights == "none" else config.weights  # "imagenet" or a file path
        backbone = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=(config.image_size, config.image_size, 3), pooling="avg",
        )
        backbone.trainable = not config.freeze_backbone
        features = backbone(normalized, training=False if config.freeze_backbone else None)
    else:
        features = small_cnn(Normalize("unit", name="normalize")(inputs))
    # Logits stay float32 under mixed precision: the losses need the precision.
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)
    return keras.Model(inputs, logits, name=f"{config.backbone}_spml")
