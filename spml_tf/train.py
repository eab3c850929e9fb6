"""The training command: `spml-train`, `python -m spml_tf.train` and the clone's `python train_main.py`; and,
for Python, `train_and_evaluate(config)`.

Its flags are the run's own (defined here) and every method's hyper-parameters (one flag per
methods.HYPERPARAMETERS entry, with the help its family gives). Flags that a preset sets (docs/method.md
section 4) default to None: the preset fills them, and a flag given on the command line wins. Importing this
module imports no TensorFlow: `main` installs the signal handling first, then defines the flags (which
imports the methods, and so TensorFlow), so TensorFlow's threads inherit the blocked signals.
"""

import os

from absl import flags

from spml_tf import cli
from spml_tf.core.errors import UsageError

FLAGS = flags.FLAGS


def define_flags():
    """Every flag of the training command (once: the clone's flags.py and tests call it too)."""
    from spml_tf import config as config_lib, methods

    if "loss" in FLAGS:
        return
    flags.DEFINE_enum("dataset", "digits", config_lib.DATASETS, "Dataset; `digits` is embedded (no download).")
    flags.DEFINE_string("data_dir", None, "Directory of the converted TFRecord splits (default: the dataset's cache).")
    flags.DEFINE_string("model_dir", None, "Where results.json, weights and TensorBoard logs go (default: runs/...).")
    flags.DEFINE_string("loss", None, "Training loss (default em_apl; the README's method table lists them, and an "
                        "unknown name is answered with the list).")
    flags.DEFINE_integer("epochs", None, "Training epochs.")
    flags.DEFINE_integer("batch_size", None, "GLOBAL batch size, split evenly over the replicas (GPUs x workers).")
    flags.DEFINE_float("learning_rate", None, "Learning rate (the head's is --head_lr_mult times it).")
    flags.DEFINE_integer("observed_negatives", None,
                         "Negatives per image the observation process keeps (Cole et al.'s num_neg; digits only: "
                         "other datasets fix it when converted).")
    flags.DEFINE_enum("train_set_variant", None, config_lib.LABEL_VARIANTS,
                      "observed: single-positive training labels; clean: all labels (the `full` oracle).")
    flags.DEFINE_enum("val_set_variant", None, config_lib.LABEL_VARIANTS,
                      "clean: select the epoch on full validation labels; observed: on single-positive ones.")
    flags.DEFINE_enum("backbone", None, config_lib.BACKBONES, "Backbone network.")
    flags.DEFINE_string("weights", None, "Backbone weights: imagenet, none, or a path to a weights file.")
    flags.DEFINE_boolean("freeze_backbone", None, "Train only the linear head (linear probing).")
    flags.DEFINE_integer("image_size", None, "Square input size in pixels.")
    flags.DEFINE_boolean("random_flip", None, "Random horizontal flip when training.")
    flags.DEFINE_integer("seed", None, "Seed of weight initialisation and shuffling.")
    flags.DEFINE_integer("patience", None, "Epochs without val mAP improvement before stopping (paper: 0).")
    flags.DEFINE_boolean("deterministic", None, "TensorFlow op determinism and an ordered input pipeline: the same "
                         "command gives the same results, and a resumed run the results of an uninterrupted one "
                         "(a little slower).")
    flags.DEFINE_enum("strategy", None, config_lib.STRATEGIES,
                      "auto: MirroredStrategy over every visible GPU when there are several, else one device; "
                      "multi_worker: MultiWorkerMirroredStrategy configured from TF_CONFIG (see README).")
    flags.DEFINE_enum("mixed_precision", None, config_lib.MIXED_PRECISIONS,
                      "none, or a mixed policy (mixed_float16 on NVIDIA GPUs, mixed_bfloat16 on TPUs and recent "
                      "CPUs/GPUs); logits, losses and metrics stay float32.")
    flags.DEFINE_boolean("jit_compile", None, "XLA-compile the training step.")
    flags.DEFINE_float("worker_timeout", None, "multi_worker: seconds to wait for every worker of TF_CONFIG to start "
                       "before giving up (default 300).")
    flags.DEFINE_enum("head", None, config_lib.HEADS, "linear: global average pool, then a linear layer; boostlu: "
                      "BoostLU's 1x1 conv to class maps, positives x --boostlu_alpha, then global average pool.")
    flags.DEFINE_float("boostlu_alpha", None, "BoostLU: factor of the positive class activations (authors: 5).")
    flags.DEFINE_float("head_lr_mult", None, "The head's learning rate is this times --learning_rate (LL, BoostLU, "
                       "GR: 10).")
    flags.DEFINE_enum("optimizer", None, config_lib.OPTIMIZERS, "adam, or sgd (torch's: momentum, weight decay added "
                      "to the gradient).")
    flags.DEFINE_float("momentum", None, "sgd: momentum.")
    flags.DEFINE_float("weight_decay", None, "sgd: weight decay (torch's coupled L2).")
    flags.DEFINE_float("max_map_drop", None, "> 0: stop when val mAP falls more than this below its best (LL: 3, "
                       "GR: 2); --patience is then unused.")
    flags.DEFINE_boolean("verbose", False, "On an error, also print the Python traceback.")
    flags.DEFINE_boolean("per_class", False, "At the end, print every class's AP (default: the ten worst on test).")

    flags.DEFINE_string("export_dir", None, "After training, export a SavedModel for TF Serving under this base path.")
    flags.DEFINE_float("serving_threshold", config_lib.THRESHOLD,
                       "Exported model: probability from which a class is in `labels`.")
    for name, parameter in methods.HYPERPARAMETERS.items():
        define = {float: flags.DEFINE_float, int: flags.DEFINE_integer, tuple: flags.DEFINE_list}
        define[type(parameter.default)](name, None, parameter.help)


def config_flags():
    """The flags whose value becomes the Config field of the same name: all of Config's but the dataset (which
    picks the preset) and the threshold (a run's is fixed; --serving_threshold sets the exported model's)."""
    import dataclasses

    from spml_tf import config as config_lib

    return tuple(field.name for field in dataclasses.fields(config_lib.Config)
                 if field.name not in ("dataset", "threshold"))


def config_from_flags():
    """The dataset preset with every flag the user set replacing the preset's value."""
    from spml_tf import config as config_lib, methods

    overrides = {name: getattr(FLAGS, name) for name in config_flags() if getattr(FLAGS, name) is not None}
    for name, parameter in methods.HYPERPARAMETERS.items():
        if name in overrides and isinstance(parameter.default, tuple):
            try:
                overrides[name] = tuple(float(value) for value in overrides[name])
            except ValueError:
                raise UsageError(f"--{name}={','.join(overrides[name])} must be two numbers: first,last") from None
    return config_lib.from_overrides(FLAGS.dataset, **overrides)


def train_and_evaluate(config, **options):
    """Trains `config` and returns the results dict (spml_tf.training.trainer.train_and_evaluate)."""
    from spml_tf.training import trainer

    return trainer.train_and_evaluate(config, **options)


def run():
    from spml_tf.serving import export

    config = config_from_flags()
    export.check_threshold(FLAGS.serving_threshold)
    if FLAGS.export_dir:
        export.check_export_dir(FLAGS.export_dir)
    results = train_and_evaluate(config, per_class=FLAGS.per_class)
    if FLAGS.export_dir:
        version_dir = export.export_run(results["config"]["model_dir"], FLAGS.export_dir, FLAGS.serving_threshold)
        print(f"Exported the SavedModel for TF Serving to {version_dir}")


def main(program=None):
    """The command line: signals, flags, then training; errors are one line (cli.main_for)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    from absl import app

    from spml_tf.core import stopping

    program = program or cli.program_name("spml-train")
    stopping.install(program)  # before TensorFlow starts its threads: they inherit the blocked signals
    define_flags()
    app.run(cli.main_for(program, run), flags_parser=cli.flags_parser(program))


if __name__ == "__main__":
    main("spml_tf.train")
