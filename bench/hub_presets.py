"""Local KerasHub presets with the real presets' geometries and random weights, for `--backbone=hub:<directory>`.

    python bench/hub_presets.py [--out_dir=/tmp/spml_hub_presets] [--families=resnet_50,dinov2_small]

No download is possible on the benchmark machine, so the published presets cannot be fetched; a preset written
here by KerasHub's own `save_to_preset` (backbone config and weights, image converter) has the same layers, shapes
and preprocessing as the published one, only random weights: the same compute per step, which is what
bench/train_step.py measures. Each family is written to `<out_dir>/<family>` and printed with its parameter count
beside the published preset's (keras_hub's own preset metadata, in `<family>_presets.py`).

Geometries, from the configs KerasHub's converters build for the published checkpoints (keras_hub/src/utils/timm
and .../transformers):
  resnet_50     resnet_50_imagenet: ResNet v1, bottleneck blocks [3, 4, 6, 3], filters [64, 128, 256, 512],
                strides [1, 2, 2, 2], a 7x7 64-filter stem (utils/timm/convert_resnet.py for timm's resnet50);
                ImageNet mean / std; any image size
  dinov2_small  dinov2_small (facebook/dinov2-small): patch 14, 12 layers, hidden 384, 6 heads, MLP 4 x 384 = 1536,
                layer scale 1.0, no registers, no SwiGLU, built at 518 x 518 with 518 position embeddings
                (utils/transformers/convert_dinov2.py); ImageNet mean / std. spml_tf/nets/hub.py rebuilds it at
                --image_size (its position embeddings interpolated), as it does the published preset
  vit_base      vit_base_patch16_224_imagenet (google/vit-base-patch16-224): 224 x 224, patch 16, 12 layers,
                hidden 768, 12 heads, MLP 3072, biased attention (utils/transformers/convert_vit.py); mean / std 0.5
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5,) * 3, (0.5,) * 3)
# family: (the published preset it copies, its module in keras_hub.src.models, its converter's image size)
FAMILIES = {
    "resnet_50": ("resnet_50_imagenet", "resnet", 224),
    "dinov2_small": ("dinov2_small", "dinov2", 224),
    "vit_base": ("vit_base_patch16_224_imagenet", "vit", 224),
}

flags.DEFINE_string("out_dir", os.path.join(tempfile.gettempdir(), "spml_hub_presets"),
                    "Each family goes to <out_dir>/<family>.")
flags.DEFINE_list("families", ["resnet_50", "dinov2_small"], f"Which of {', '.join(FAMILIES)}.")
flags.DEFINE_integer("seed", 0, "Seed of the random weights.")
FLAGS = flags.FLAGS


def make(family):
    """(backbone, image converter) of `family`, random weights."""
    import keras_hub

    models, layers = keras_hub.models, keras_hub.layers
    if family == "resnet_50":
        backbone = models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                                         stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
                                         stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
                                         use_pre_activation=False, image_shape=(None, None, 3))
        converter, (mean, std) = layers.ResNetImageConverter, IMAGENET
    elif family == "dinov2_small":
        backbone = models.DINOV2Backbone(patch_size=14, num_layers=12, hidden_dim=384, num_heads=6,
                                         intermediate_dim=1536, layer_scale_init_value=1.0, num_register_tokens=0,
                                         use_mask_token=True, use_swiglu_ffn=False, image_shape=(518, 518, 3),
                                         position_embedding_shape=(518, 518, 3), antialias_in_interpolation=False)
        converter, (mean, std) = layers.DINOV2ImageConverter, IMAGENET
    elif family == "vit_base":
        backbone = models.ViTBackbone(image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12,
                                      hidden_dim=768, mlp_dim=3072, use_mha_bias=True)
        converter, (mean, std) = layers.ViTImageConverter, HALF
    else:
        raise app.UsageError(f"--families: unknown {family!r}; known: {', '.join(FAMILIES)}")
    size = FAMILIES[family][2]
    converter = converter(image_size=(size, size), scale=[1.0 / 255.0 / s for s in std],
                          offset=[-m / s for m, s in zip(mean, std)])
    return backbone, converter


def published_params(family):
    """The published preset's parameter count, from keras_hub's preset metadata."""
    import importlib

    name, module, _ = FAMILIES[family]
    presets = importlib.import_module(f"keras_hub.src.models.{module}.{module}_presets").backbone_presets
    return presets[name]["metadata"]["params"]


def write(family, out_dir, seed=0):
    """Writes `family` into `out_dir/family`; returns (directory, params, published params)."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone, converter = make(family)
    directory = os.path.join(out_dir, family)
    os.makedirs(directory, exist_ok=True)
    backbone.save_to_preset(directory)
    converter.save_to_preset(directory)
    return directory, backbone.count_params(), published_params(family)


def main(argv):
    del argv
    unknown = [family for family in FLAGS.families if family not in FAMILIES]
    if unknown:
        raise app.UsageError(f"--families: unknown {unknown}; known: {', '.join(FAMILIES)}")
    for family in FLAGS.families:
        directory, params, published = write(family, FLAGS.out_dir, FLAGS.seed)
        print(f"{family:13s} {directory}  {params:,} parameters (published {FAMILIES[family][0]}: {published:,}; "
              f"{'equal' if params == published else f'differs by {params - published:+,}'})  "
              f"--backbone=hub:{directory}", flush=True)


if __name__ == "__main__":
    app.run(main)
