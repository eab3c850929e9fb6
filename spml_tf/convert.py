"""The conversion command: `spml-convert` and `python -m spml_tf.convert --dataset=voc --raw_dir=DIR` (the work
is spml_tf/data/convert.py)."""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from spml_tf import cli
from spml_tf.core.errors import UsageError
from spml_tf.data import image_limits
from spml_tf.data.convert import DATASETS, ConvertConfig, convert


def define_flags():
    """The command-line flags (defined only when run as a program: train_main has its own)."""
    flags.DEFINE_enum("dataset", None, DATASETS, "What to convert.")
    flags.DEFINE_string("out_dir", None, "Where the train/val/test splits go (default: the dataset's data "
                        "directory that train_main.py reads, $SPML_TF_DATA/<name> or ~/.cache/spml_tf/<name>).")
    flags.DEFINE_string("raw_dir", None, "voc, coco, nuswide, cub: the release as extracted (with --download: "
                        "where it is downloaded and extracted).")
    flags.DEFINE_boolean("download", False, "voc, coco: fetch the official archives into --raw_dir first "
                         "(resumes an interrupted download, verifies size and MD5).")
    flags.DEFINE_string("mirror", None, "With --download: base URL of a mirror holding the same archive files.")
    flags.DEFINE_string("formatted_dir", None, "formatted: directory of formatted_{train,val}_{images,labels}.npy.")
    flags.DEFINE_string("image_root", None, "formatted, csv: the directory image paths are relative to "
                        "(nuswide: default <raw_dir>/Flickr).")
    flags.DEFINE_string("name", None, "formatted, csv: the dataset's name (recorded in the manifests).")
    flags.DEFINE_string("train_csv", None, "csv: training images, columns image,labels (labels: class names "
                        "separated by '|', usually the one annotated positive).")
    flags.DEFINE_string("val_csv", None, "csv: validation images with their full label sets (default: hold out "
                        "20% of --train_csv and select epochs on its single-positive labels).")
    flags.DEFINE_string("test_csv", None, "csv: test images with their full label sets.")
    flags.DEFINE_string("classes", None, "A file with one class name per line, in label order (default: "
                        "csv: the sorted names used; formatted: class_000, ...).")
    flags.DEFINE_integer("observed_negatives", 0, "Negatives per training image the observation keeps "
                         "(Cole et al.'s num_neg; the paper uses 0).")
    flags.DEFINE_boolean("skip_bad_images", False, "Leave out unreadable images and unusable label rows "
                         "(recorded in the manifests) instead of failing.")
    flags.DEFINE_float("shard_size_mb", 150.0, "Approximate size of one TFRecord shard.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes that check images and write shards.")
    flags.DEFINE_integer("resize_to", 0, "Store every image resized to this side (square, bilinear as in training, "
                         "re-encoded as JPEG 95) instead of the source bytes: training at that --image_size then "
                         "skips the resize (3.7x the images/s on our CPU, "
                         "bench/input_pipeline.py). "
                         "0: keep the source files as they are.")
    flags.DEFINE_integer("max_image_pixels", image_limits.DEFAULT_MAX_PIXELS, "An image whose header declares more "
                         "pixels than this is a bad input (refused before it is decoded).")
    flags.DEFINE_boolean("verbose", False, "TensorFlow's own log lines and warnings, and on an error the Python "
                         "traceback.")


def config_from_flags():
    values = {field.name: getattr(flags.FLAGS, field.name) for field in dataclasses.fields(ConvertConfig)}
    if values["dataset"] is None:
        raise UsageError(f"--dataset is required: one of {', '.join(DATASETS)}")
    return ConvertConfig(**{key: value for key, value in values.items() if value is not None})


def main():
    """`spml-convert` and `python -m spml_tf.convert`."""
    cli.run_command("convert", define_flags, lambda: convert(config_from_flags()))


if __name__ == "__main__":
    main()
