"""A frozen CLIP or SigLIP from a KerasHub preset: L2-normalised image and text embeddings (the `clip` extra).

`load(preset)` takes whatever KerasHub's `from_preset` takes: a preset name (`clip_vit_base_patch16`,
`siglip_base_patch16_224`), a `kaggle://` or `hf://` handle, or a local directory written by `save_to_preset`. The
model comes with the preset's own tokenizer, text preprocessing and image normalisation; nothing here is ours but
the batching. KerasHub is imported only when a model is loaded: without it, one line says how to install it.

Imports spml_tf.core only.
"""

import logging
import os
import re

import numpy as np

from spml_tf.core.errors import UsageError, did_you_mean

INSTALL_HINT = ('the vision-language scores need KerasHub: pip install "spml-tf[clip]" '
                '(in a clone: pip install -r requirements-clip.txt)')
TEXT_BATCH = 64
# Preset names a "not a name KerasHub knows" line shows (those of KerasHub 0.32 that the README names).
EXAMPLES = ("clip_vit_base_patch16", "siglip_base_patch16_224", "dinov2_small", "vit_base_patch16_224_imagenet21k",
            "resnet_50_imagenet")


def import_keras_hub():
    """The keras_hub module, or UsageError(INSTALL_HINT) when it is not installed (or does not import)."""
    try:
        import keras_hub
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return keras_hub


class VisionLanguageModel:
    """A loaded preset. `image_size` is its input side; images are resized to it (squashed, no crop) by the
    caller, with `interpolation` and `antialias` (the preset's own image converter's)."""

    def __init__(self, preset, backbone, preprocessor):
        import tensorflow as tf

        self.preset, self.backbone = preset, backbone
        self.family = "siglip" if "SigLIP" in type(backbone).__name__ else "clip"
        converter = preprocessor.image_converter
        if converter is None:
            raise UsageError(f"the preset {preset!r} has no image converter (image_converter.json): its images' "
                             "normalisation is unknown")
        side = converter.image_size or tuple(backbone.vision_encoder.image_shape or (None, None))[:2]
        if side[0] is None or side[0] != side[1]:
            raise UsageError(f"the preset {preset!r} has no square input size (it says {side})")
        self.image_size = int(side[0])
        self.interpolation, self.antialias = converter.interpolation, bool(converter.antialias)
        converter.image_size = None  # images come at the size already: only the preset's scale and offset
        preprocessor.image_converter = None  # the text half alone (SigLIP's would convert images=None)
        self._text = preprocessor
        self.embedding_dim = int(getattr(backbone, "projection_dim", None) or backbone.vision_encoder.hidden_dim)

        size = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)
        def embed(images):
            return tf.cast(backbone.get_vision_embeddings(converter(images)), tf.float32)

        @tf.function(reduce_retracing=True)
        def embed_tokens(token_ids):
            return tf.cast(backbone.get_text_embeddings(token_ids), tf.float32)

        self._embed_images, self._embed_tokens = embed, embed_tokens

    def embed_images(self, images):
        """float32 [N, D], unit length, of images [N, S, S, 3] (uint8, or float in [0, 255]; S = image_size)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images of shape {images.shape}, not [N, {self.image_size}, {self.image_size}, 3]")
        if not len(images):  # the patch embedding does not take an empty batch
            return np.zeros((0, self.embedding_dim), np.float32)
        return normalise(self._embed_images(images.astype(np.float32)).numpy())

    def embed_texts(self, texts):
        """float32 [len(texts), D], unit length: each text tokenised and embedded as the preset does it."""
        texts = [str(text) for text in texts]
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self._text({"images": None, "prompts": texts[start:start + TEXT_BATCH]})
            parts.append(self._embed_tokens(tokens["token_ids"]).numpy())
        return normalise(np.concatenate(parts)) if parts else np.zeros((0, self.embedding_dim), np.float32)


def normalise(vectors):
    """Rows scaled to unit L2 length (float32; a zero row stays zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def load(preset):
    """The frozen model of `preset`; UsageError in one line when KerasHub is missing, the preset cannot be
    downloaded or read, or it is not a CLIP or SigLIP model."""
    keras_hub = import_keras_hub()
    models = keras_hub.models
    preprocessors = {models.CLIPBackbone: models.CLIPPreprocessor, models.SigLIPBackbone: models.SigLIPPreprocessor}
    with _quiet_downloads():
        backbone = _from_preset(models.Backbone, preset, keras_hub)
        kind = next((cls for cls in preprocessors if isinstance(backbone, cls)), None)
        if kind is None:
            raise UsageError(f"the preset {preset!r} holds a {type(backbone).__name__}, not a CLIP or SigLIP model")
        preprocessor = _from_preset(preprocessors[kind], preset, keras_hub)
    backbone.trainable = False
    return VisionLanguageModel(preset, backbone, preprocessor)


def _from_preset(cls, preset, keras_hub, known=None, **options):
    """cls.from_preset(preset, **options); UsageError in one line (`known`: the preset names a typo is compared
    with; default CLIP's and SigLIP's)."""
    try:
        return cls.from_preset(preset, **options)
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001  (KerasHub, kagglehub, huggingface_hub, h5py: each its own)
        from spml_tf.core import stopping

        if isinstance(error, stopping.Stopped):
            raise
        if isinstance(error, ImportError):  # tensorflow-text, which KerasHub's tokenizers need
            raise UsageError(f"{INSTALL_HINT} ({' '.join(str(error).split())[:200]})") from None
        raise UsageError(f"cannot load the preset {preset!r}: {_why(preset, error, keras_hub, known)}") from None


def _why(preset, error, keras_hub, known=None):
    """One line on why `from_preset` failed."""
    text = " ".join(str(error).split())
    local = "://" not in preset
    if local and not os.path.isdir(preset) and text.startswith("Unknown preset identifier"):
        names = sorted(known or {*keras_hub.models.CLIPBackbone.presets, *keras_hub.models.SigLIPBackbone.presets})
        examples = [name for name in EXAMPLES if name in names] or names[:2]
        return (f"no such directory, and not a name KerasHub knows ({', '.join(examples)}, ...)"
                f"{did_you_mean(preset, names)}")
    if isinstance(error, OSError) and type(error).__module__.startswith(("requests", "urllib3", "kaggle")):
        host = re.search(r"host='([^']+)'", text)
        where = f" from {host[1]}" if host else ""
        return (f"cannot download it{where} ({type(error).__name__}); without a network, pass a directory "
                "the preset was saved to (save_to_preset) or set KAGGLEHUB_CACHE to a cache that holds it")
    if text.startswith("Preset hf://") and "has no config.json" in text:
        return "Hugging Face does not serve it (no network, no such repository, or not a KerasHub preset)"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _quiet_downloads:
    """huggingface_hub's retry warnings off the terminal while a preset loads: the error says it in one line."""

    NAMES = ("huggingface_hub", "kagglehub")

    def __enter__(self):
        try:
            import huggingface_hub.utils.logging  # noqa: F401  (its import sets its logger's level: first, then ours)
        except ImportError:
            pass
        self.levels = {name: logging.getLogger(name).level for name in self.NAMES}
        for name in self.NAMES:
            logging.getLogger(name).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc_info):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        return False
