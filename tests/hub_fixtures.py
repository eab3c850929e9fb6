"""Tiny random KerasHub image backbones saved as local presets with KerasHub's own `save_to_preset`: they load
through the same `Backbone.from_preset` path a user's preset takes (no download)."""

import os

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5,) * 3, (0.5,) * 3)


def save_tiny(family, directory, image_size=32, seed=0):
    """A random `family` backbone (resnet: a CNN of any size; vit: tokens with a class token, fixed size; dinov2:
    resized on load) and its image converter, saved into `directory`; returns it."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    models, layers = keras_hub.models, keras_hub.layers
    if family == "resnet":
        backbone = models.ResNetBackbone(input_conv_filters=[8], input_conv_kernel_sizes=[3],
                                         stackwise_num_filters=[64], stackwise_num_blocks=[1],
                                         stackwise_num_strides=[2], block_type="bottleneck_block",
                                         image_shape=(None, None, 3))
        converter, (mean, std) = layers.ResNetImageConverter, IMAGENET
    elif family == "vit":
        backbone = models.ViTBackbone(image_shape=(image_size, image_size, 3), patch_size=8, num_layers=2,
                                      num_heads=2, hidden_dim=16, mlp_dim=32)
        converter, (mean, std) = layers.ViTImageConverter, HALF
    elif family == "dinov2":
        backbone = models.DINOV2Backbone(patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                                         image_shape=(image_size, image_size, 3),
                                         position_embedding_shape=(image_size, image_size, 3))
        converter, (mean, std) = layers.DINOV2ImageConverter, IMAGENET
    else:
        raise ValueError(family)
    converter = converter(image_size=(image_size, image_size), scale=[1.0 / 255.0 / s for s in std],
                          offset=[-m / s for m, s in zip(mean, std)])
    os.makedirs(directory, exist_ok=True)
    backbone.save_to_preset(directory)
    converter.save_to_preset(directory)
    return directory
