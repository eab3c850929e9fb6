"""Any KerasHub image backbone as the classifier's feature extractor: `--backbone=hub:<preset>`.

The preset is what `keras_hub.models.Backbone.from_preset` takes (a name such as `dinov2_small`, a `kaggle://` or
`hf://` handle, a local directory written by `save_to_preset`); a CLIP or SigLIP preset gives its vision encoder.
The preset's own image converter (its scale and offset: (x / 255 - mean) / std) is the model's first layer, so
images go in as everywhere else here, in [0, 255] at --image_size, and export, predict and Classifier work
unchanged. The converter's own resize is switched off (the pipeline resizes; a Resizing layer called without
`training` also leaks training mode into the BatchNorm after it, a Keras 3.15 bug).

Features are pooled as each family's own classifier pools them: the class token of ViT, DINOv2 and CLIP, the
mean of Swin's tokens, SigLIP's attention-pooled vector, the average of a CNN's feature map (ResNet,
EfficientNet, ...). BoostLU's head needs a feature map: CNN backbones only.

Image size: CNNs take any; DINOv2 and Swin are built at --image_size from the preset (DINOv2 interpolates its
position embeddings; Swin needs at least 224 for its 7-pixel windows); ViT, CLIP and SigLIP keep the size they
were trained at (a clear error names it). For MirroredStrategy to equal one device, every BatchNormalization
of the backbone is synchronised over the replicas. DINOv2's interpolated position embeddings are frozen
(KerasHub 0.32 does not save their changes reliably).

Imports spml_tf.core (and spml_tf.nets.clip's preset loading).
"""

import keras

from spml_tf.core.errors import UsageError
from spml_tf.nets import clip

PREFIX = "hub:"
# Families (by the backbone's class name) whose size is fixed by their position embeddings.
FIXED_SIZE = ("ViTBackbone", "CLIPVisionEncoder", "SigLIPVisionEncoder", "CLIPBackbone", "SigLIPBackbone")
RESIZED_ON_LOAD = ("DINOV2Backbone", "DINOV3Backbone", "SwinTransformerBackbone")
CLS_TOKEN = ("ViTBackbone", "DINOV2Backbone", "DINOV3Backbone", "CLIPVisionEncoder")


def is_hub(backbone):
    return backbone.startswith(PREFIX)


def preset_of(backbone):
    """The preset handle of `hub:<preset>`; UsageError when it is empty."""
    preset = backbone[len(PREFIX):]
    if not preset:
        raise UsageError("--backbone=hub: needs a preset: hub:<a KerasHub preset name, handle or directory>")
    return preset


def load(preset, image_size, load_weights=True):
    """(backbone, converter) of `preset` at `image_size`: the image backbone (a CLIP or SigLIP model's vision
    encoder) and its image converter without its resize; UsageError in one line when it cannot be."""
    keras_hub = _keras_hub()
    models = keras_hub.models
    known = sorted(name for cls in _image_backbones(models) for name in cls.presets)
    options = {} if load_weights else {"load_weights": False}
    with clip._quiet_downloads():
        backbone = clip._from_preset(models.Backbone, preset, keras_hub, known, **options)
        if type(backbone).__name__ in RESIZED_ON_LOAD and _size(backbone) != image_size:
            backbone = clip._from_preset(models.Backbone, preset, keras_hub, known,
                                         image_shape=(image_size, image_size, 3), **options)
        converter = _converter(preset, keras_hub, known)
    backbone = getattr(backbone, "vision_encoder", backbone)  # CLIP, SigLIP: the image half
    name = type(backbone).__name__
    if name in FIXED_SIZE and _size(backbone) not in (None, image_size):
        raise UsageError(f"hub:{preset} is a {name} for {_size(backbone)} x {_size(backbone)} images (its position "
                         f"embeddings fix the size): give --image_size={_size(backbone)}")
    if name == "SwinTransformerBackbone" and image_size < 224:
        raise UsageError(f"hub:{preset} is a Swin transformer: its windows need --image_size of at least 224")
    converter.image_size = None  # the pipeline resizes (see the module's text)
    for layer in backbone._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    embeddings = getattr(getattr(backbone, "embeddings", None), "interpolated_position_embeddings", None)
    if embeddings is not None:
        embeddings.trainable = False
    return backbone, converter


def features(backbone, converter, images, pooling, training=None):
    """The backbone's features of `images` (in [0, 255]): pooled to one vector per image, or (pooling=False, for
    BoostLU) the feature map."""
    x = converter(images)
    x = backbone({"images": x} if isinstance(backbone.input, dict) else x, training=training)
    name = type(backbone).__name__
    if not pooling:
        if len(x.shape) != 4:
            raise UsageError(f"--head=boostlu needs a feature map, and a {name} gives tokens: use --head=linear")
        return x
    if len(x.shape) == 4:
        return keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if len(x.shape) == 3:
        if name in CLS_TOKEN:
            return x[:, 0, :]  # the class token (a built-in GetItem: the saved model loads with safe_mode)
        return keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return x  # SigLIP: already pooled


def _image_backbones(models):
    """KerasHub's backbone classes of images (a typo is compared with their preset names only)."""
    words = ("ResNet", "ViT", "DINOV", "SigLIP", "CLIP", "Swin", "EfficientNet", "DeiT", "MobileNet", "CSPNet",
             "DenseNet", "HGNet", "VGG", "Xception", "MiT")
    return [getattr(models, name) for name in dir(models)
            if name.endswith(("Backbone", "VisionEncoder")) and name.startswith(words)]


def _size(backbone):
    shape = getattr(backbone, "image_shape", None) or getattr(backbone, "input_shape", None)
    if isinstance(shape, (list, tuple)) and len(shape) >= 2 and isinstance(shape[-3 if len(shape) == 4 else 0], int):
        return shape[-3] if len(shape) == 4 else shape[0]
    return None


def _converter(preset, keras_hub, known):
    try:
        return clip._from_preset(keras_hub.layers.ImageConverter, preset, keras_hub, known)
    except UsageError:
        # A preset of a bare CLIP or SigLIP vision encoder has no converter class of its own: read its file.
        import json
        import os

        path = os.path.join(preset, "image_converter.json")
        if not os.path.isfile(path):
            raise UsageError(f"the preset {preset!r} has no image converter (its preprocessing)") from None
        with open(path) as f:
            return keras.saving.deserialize_keras_object(json.load(f))


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise UsageError('--backbone=hub:... needs KerasHub: pip install "spml-tf[clip]" (in a clone: pip install '
                         "-r requirements-clip.txt)") from None
    return keras_hub
