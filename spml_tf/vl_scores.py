"""The vision-language scores command: `spml-vl-scores` and `python -m spml_tf.vl_scores --dataset=voc
--preset=clip_vit_base_patch16` (the work is spml_tf/training/vl_scores.py; the model spml_tf/nets/clip.py).

A frozen CLIP or SigLIP scores every training image once, whole and in tiles, against one prompt per class; the
trainer's CLIP pseudo-positives (--vl_positives, --loss=vlpl, --loss=aevlp) read the scores. Needs KerasHub: pip
install "spml-tf[clip]" (in a clone: pip install -r requirements-clip.txt). A stopped run continues when run again.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from spml_tf import cli
from spml_tf.core.errors import UsageError

DATASETS = ("voc", "coco", "nuswide", "cub", "custom", "digits")


def define_flags():
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_enum("dataset", None, DATASETS, "The converted dataset whose training images are scored.")
    flags.DEFINE_string("data_dir", None, "The converted dataset (default: where spml-train reads it, "
                        "$SPML_TF_DATA/<dataset> or ~/.cache/spml_tf/<dataset>).")
    flags.DEFINE_string("preset", None, "A CLIP or SigLIP preset as KerasHub's from_preset takes it: a name "
                        "(clip_vit_base_patch16, siglip_base_patch16_224), a kaggle:// or hf:// handle, or a "
                        "directory written by save_to_preset.")
    flags.DEFINE_string("template", "a photo of a {name}.", "The prompt of a class; {name} is its name.")
    flags.DEFINE_string("class_names", None, "Wordings of the classes in prompts, in label order: a comma-separated "
                        "list, or a file with one per line (default: the dataset's class names, _ as spaces).")
    flags.DEFINE_integer("grid", None, "Tiles per side of the image (default 4; 5 for cub); 0: the whole image only, "
                         "all VLPL's rule reads (1 view per image instead of 17).")
    flags.DEFINE_float("tile_temperature", None, "Temperature of the softmax over classes of a tile's cosines "
                       "(default 0.01; 0.1 for cub).")
    flags.DEFINE_integer("batch_size", 32, "Views (whole images and tiles) per model call.")
    flags.DEFINE_integer("chunk_size", 512, "Images per chunk saved as the run goes: a stopped run continues after "
                         "its last whole chunk, with the batch and chunk size it started with.")
    flags.DEFINE_string("out_dir", None, "Where scores.npz and scores.json go (default: <data_dir>/vl_scores/<the "
                        "preset's name>, where spml-train looks).")
    flags.DEFINE_boolean("verbose", False, "TensorFlow's own log lines and warnings, and on an error the Python "
                         "traceback.")


def run():
    """Checks the flags, reads the dataset's train manifest, then scores (or finds the scores done)."""
    values = flags.FLAGS
    if values.dataset is None:
        raise UsageError(f"--dataset is required: one of {', '.join(DATASETS)}")
    if not values.preset:
        raise UsageError("--preset is required: a CLIP or SigLIP preset name (clip_vit_base_patch16, ...), a "
                         "kaggle:// or hf:// handle, or a directory written by save_to_preset")
    from spml_tf.data import datasets
    from spml_tf.training import vl_scores

    grid = vl_scores.default_grid(values.dataset) if values.grid is None else values.grid
    temperature = (vl_scores.default_tile_temperature(values.dataset) if values.tile_temperature is None
                   else values.tile_temperature)
    for name, value, ok in (("grid", grid, 0 <= grid <= 16), ("tile_temperature", temperature, temperature > 0),
                            ("batch_size", values.batch_size, values.batch_size >= 1),
                            ("chunk_size", values.chunk_size, values.chunk_size >= 1)):
        if not ok:
            raise UsageError(f"--{name}={value} must be " + ("in 0..16" if name == "grid" else "positive"))
    wordings = vl_scores.read_wordings(values.class_names) if values.class_names else None
    splits = datasets.load(values.dataset, values.data_dir)
    train = splits.train
    prompts = vl_scores.prompts_for(train.class_names, values.template, wordings)
    data_dir = values.data_dir or datasets.default_data_dir(values.dataset)
    out_dir = values.out_dir or vl_scores.default_out_dir(values.dataset, data_dir, values.preset)
    settings = vl_scores.settings_of(train, values.dataset, values.preset, values.template, prompts, grid,
                                     temperature)
    vl_scores.score(train, out_dir, settings, batch_size=values.batch_size, chunk_size=values.chunk_size)


def main():
    """`spml-vl-scores` and `python -m spml_tf.vl_scores`: SIGINT / SIGTERM stop it in one line (exit 128 + the
    signal); what was scored stays."""
    from spml_tf.core import stopping

    program = cli.program_name("vl_scores")
    stopping.install(program)  # before TensorFlow starts its threads: they inherit the blocked signals
    cli.run_command("vl_scores", define_flags, run)


if __name__ == "__main__":
    main()
