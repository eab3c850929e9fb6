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

from spml_tf import choices, cli
from spml_tf.core.errors import UsageError
from spml_tf.training.metrics import THRESHOLD

FLAGS = flags.FLAGS


# The groups of --help, in order, and the flags of each (a method's hyper-parameters are in "method").
GROUPS = (
    ("data", ("dataset", "data_dir", "observed_negatives", "train_set_variant", "val_set_variant", "image_size",
              "random_flip")),
    ("network", ("backbone", "weights", "freeze_backbone", "head", "boostlu_alpha")),
    ("method", ("loss", "vl_positives", "vl_scores")),
    ("optimisation", ("epochs", "batch_size", "learning_rate", "head_lr_mult", "optimizer", "momentum",
                      "weight_decay", "patience", "max_map_drop", "seed", "deterministic")),
    ("scale", ("strategy", "mixed_precision", "jit_compile", "worker_timeout")),
    ("output", ("model_dir", "export_dir", "serving_threshold", "progress", "log_every_steps", "per_class",
                "print_config", "verbose")),
)


def define_run_flags():
    """The run's own flags (no TensorFlow needed: they are checked before it is imported)."""
    if "loss" in FLAGS:
        return
    choice = choices.CHOICES

    def define_choice(name, default, help_text):
        flags.DEFINE_string(name, default, f"{help_text} One of: {', '.join(choice[name])}.")

    define_choice("dataset", "digits", "Dataset; `digits` is embedded (no download).")
    flags.DEFINE_string("data_dir", None, "Directory of the converted TFRecord splits (default: the dataset's cache).")
    flags.DEFINE_string("model_dir", None, "Where results.json, weights and TensorBoard logs go (default: runs/...).")
    define_choice("loss", None, "The method: a loss, or <loss>+boostlu for the loss on BoostLU's head (the "
                  "README's method table).")
    flags.DEFINE_integer("epochs", None, "Training epochs.")
    flags.DEFINE_integer("batch_size", None, "GLOBAL batch size, split evenly over the replicas (GPUs x workers).")
    flags.DEFINE_float("learning_rate", None, "Learning rate (the head's is --head_lr_mult times it).")
    flags.DEFINE_integer("observed_negatives", None,
                         "Negatives per image the observation process keeps (Cole et al.'s num_neg; digits only: "
                         "other datasets fix it when converted).")
    define_choice("train_set_variant", None,
                  "observed: single-positive training labels; clean: all labels (the `full` oracle).")
    define_choice("val_set_variant", None,
                  "clean: select the epoch on full validation labels; observed: on single-positive ones.")
    define_choice("backbone", None, "Backbone network: resnet50 is the paper's (torchvision's ResNet-50); "
                  "hub:<preset> any KerasHub image backbone (a name such as dinov2_small, a kaggle:// or hf:// handle, "
                  "or a directory saved with save_to_preset), with the preset's own preprocessing.")
    flags.DEFINE_string("weights", None, "Backbone weights: imagenet, none, or a path to a weights file.")
    flags.DEFINE_boolean("freeze_backbone", None, "Train only the linear head (linear probing).")
    flags.DEFINE_integer("image_size", None, "Square input size in pixels.")
    flags.DEFINE_boolean("random_flip", None, "Random horizontal flip when training.")
    flags.DEFINE_integer("seed", None, "Seed of weight initialisation and shuffling.")
    flags.DEFINE_integer("patience", None, "Epochs without val mAP improvement before stopping (paper: 0).")
    flags.DEFINE_boolean("deterministic", None, "TensorFlow op determinism and an ordered input pipeline: the same "
                         "command gives the same results, and a resumed run the results of an uninterrupted one "
                         "(a little slower).")
    define_choice("strategy", None, "auto: MirroredStrategy over every visible GPU when there are several, else one "
                  "device; multi_worker: MultiWorkerMirroredStrategy configured from TF_CONFIG (see README).")
    define_choice("mixed_precision", None, "none, or a mixed policy (mixed_float16 on NVIDIA GPUs, mixed_bfloat16 on "
                  "TPUs and recent CPUs/GPUs); logits, losses and metrics stay float32.")
    flags.DEFINE_boolean("jit_compile", None, "XLA-compile the training step.")
    flags.DEFINE_float("worker_timeout", None, "multi_worker: seconds to wait for every worker of TF_CONFIG to start "
                       "before giving up.")
    define_choice("head", None, "linear: global average pool, then a linear layer; boostlu: BoostLU's 1x1 conv to "
                  "class maps, positives x --boostlu_alpha, then global average pool.")
    flags.DEFINE_float("boostlu_alpha", None, "BoostLU: factor of the positive class activations (authors: 5).")
    flags.DEFINE_float("head_lr_mult", None, "The head's learning rate is this times --learning_rate (LL, BoostLU, "
                       "GR: 10).")
    define_choice("optimizer", None, "adam, or sgd (torch's: momentum, weight decay added to the gradient).")
    flags.DEFINE_float("momentum", None, "sgd: momentum.")
    flags.DEFINE_float("weight_decay", None, "sgd: weight decay (torch's coupled L2).")
    flags.DEFINE_float("max_map_drop", None, "> 0: also stop when val mAP falls more than this below its best (LL: "
                       "3, GR: 2, AEVLP: 2): whichever of it and --patience comes first.")
    flags.DEFINE_boolean("verbose", False, "TensorFlow's own log lines and warnings, and on an error the Python "
                         "traceback.")
    flags.DEFINE_boolean("per_class", False, "At the end, print every class's AP (default: the ten worst on test).")
    define_choice("progress", "auto", "bar: one line per epoch redrawn in place; lines: plain lines for a log file "
                  "(one per epoch, and on long epochs one every --log_every_steps steps); auto: bar on a terminal, "
                  "else lines.")
    flags.DEFINE_integer("log_every_steps", None, "--progress=lines: a line every this many steps within an epoch "
                         "(default: about one a minute).")
    define_choice("vl_positives", None, "CLIP's pseudo-positives, by VLPL's or AEVLP's rule from the scores "
                  "spml-vl-scores made: auto is the loss's own rule (--loss=vlpl, aevlp) and none for the others; any "
                  "other loss takes them as positives.")
    flags.DEFINE_string("vl_scores", None, "Directory of spml-vl-scores' output (default: the one under "
                        "<data_dir>/vl_scores).")
    flags.DEFINE_boolean("print_config", False, "Print the run's resolved configuration as JSON and exit.")
    flags.DEFINE_string("export_dir", None, "After training, export a SavedModel for TF Serving under this base path.")
    flags.DEFINE_float("serving_threshold", THRESHOLD, "Exported model: probability from which a class is in `labels`.")


def check_run_flags():
    """What can be checked before TensorFlow is imported: every name chosen from a list (did you mean ...)."""
    loss, head = choices.split_method(FLAGS.loss, FLAGS.head) if FLAGS.loss else (None, FLAGS.head)
    values = {**{name: getattr(FLAGS, name) for name in choices.CHOICES}, "loss": loss, "head": head}
    for name, value in values.items():
        if value is not None:
            choices.check(name, value)
    for name in ("epochs", "batch_size"):
        if getattr(FLAGS, name) is not None and getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name}={getattr(FLAGS, name)} must be at least 1")
    if FLAGS.log_every_steps is not None and FLAGS.log_every_steps < 1:
        raise UsageError(f"--log_every_steps={FLAGS.log_every_steps} must be at least 1")


def define_flags():
    """Every flag of the training command (once: the clone's flags.py and tests call it too)."""
    from spml_tf import methods

    define_run_flags()
    if "alpha" in FLAGS:
        return
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
    from spml_tf import config as config_lib

    return config_lib.from_overrides(FLAGS.dataset, **given_overrides())


def given_overrides():
    """The Config fields the command line sets: every flag given, with a method name split into loss and head."""
    from spml_tf import methods

    overrides = {name: getattr(FLAGS, name) for name in config_flags() if getattr(FLAGS, name) is not None}
    if "loss" in overrides:
        overrides["loss"], head = choices.split_method(overrides["loss"], overrides.get("head"))
        if head is not None:
            overrides["head"] = head
    for name, parameter in methods.HYPERPARAMETERS.items():
        if name in overrides and isinstance(parameter.default, tuple):
            try:
                overrides[name] = tuple(float(value) for value in overrides[name])
            except ValueError:
                raise UsageError(f"--{name}={','.join(overrides[name])} must be two numbers: first,last") from None
    return overrides


def help_text(program):
    """--help: the flags by group, each with the value this run would get and where it comes from."""
    import dataclasses
    import textwrap

    from spml_tf import config as config_lib, methods

    overrides = given_overrides()
    config = config_lib.from_overrides(FLAGS.dataset, **overrides)
    preset, plain = config_lib.PRESETS[config.dataset], config_lib.Config()
    protocol = methods.protocol(config.loss, config.head, config.dataset)
    fields = {field.name for field in dataclasses.fields(config_lib.Config)}

    def origin(name):
        if name in overrides or name == "dataset" and FLAGS["dataset"].present:
            return "[given]"
        if name in protocol:
            return "[protocol]"
        if name in fields and getattr(preset, name) != getattr(plain, name):
            return "[preset]"
        return ""

    def value(name):
        if name in fields:
            current = getattr(config, name)
            if name == "loss":
                current = choices.method_name(config.loss, config.head)
        else:
            current = FLAGS[name].value
        if isinstance(current, tuple):
            return ",".join(f"{number:g}" for number in current)
        if isinstance(current, bool):
            return str(current).lower()
        return "''" if current in ("", None) else f"{current:g}" if isinstance(current, float) else str(current)

    method = choices.method_name(config.loss, config.head)
    used = tuple(methods.LOSSES[config.loss].hyperparameters)
    others = tuple(name for name in methods.HYPERPARAMETERS if name not in used)
    groups = [(group, names + used if group == "method" else names) for group, names in GROUPS]
    groups.append(("other methods' hyper-parameters", others))
    lines = [f"usage: {program} [--flag=value ...]",
             "Trains a single-positive multi-label classifier (README.md; the methods: docs/method.md).",
             f"Values shown are this run's, for --dataset={config.dataset} --loss={method}: [preset] from the "
             "dataset's preset, [protocol] from the method authors' protocol, [given] on this command line.",
             "A boolean flag is also --name / --noname."]
    for group, names in groups:
        lines += ["", f"{group}:"]
        for name in names:
            lines.append(f"  --{name}={value(name)} {origin(name)}".rstrip())
            lines += textwrap.wrap(FLAGS[name].help, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def train_and_evaluate(config, **options):
    """Trains `config` and returns the results dict (spml_tf.training.trainer.train_and_evaluate)."""
    from spml_tf.training import trainer

    return trainer.train_and_evaluate(config, **options)


def run():
    import dataclasses
    import json

    from spml_tf.serving import export

    config = config_from_flags()
    export.check_threshold(FLAGS.serving_threshold)
    if FLAGS.print_config:
        print(json.dumps({"method": choices.method_name(config.loss, config.head), **dataclasses.asdict(config)},
                         indent=2))
        return
    if FLAGS.export_dir:
        export.check_export_dir(FLAGS.export_dir)
    results = train_and_evaluate(config, per_class=FLAGS.per_class, progress=FLAGS.progress,
                                 log_every_steps=FLAGS.log_every_steps)
    if FLAGS.export_dir:
        version_dir = export.export_run(results["config"]["model_dir"], FLAGS.export_dir, FLAGS.serving_threshold)
        print(f"Exported the SavedModel for TF Serving to {version_dir}")


def main(program=None):
    """The command line: signals, TensorFlow's log filtered, the run's flags checked, then the methods' flags
    (which import TensorFlow) and training; errors are one line (cli.main_for)."""
    import sys

    from absl import app

    from spml_tf.core import quiet, stopping

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    program = program or cli.program_name("spml-train")
    stopping.install(program)  # before TensorFlow starts its threads: they inherit the blocked signals
    quiet.install(verbose=cli.verbose_asked(sys.argv))
    define_run_flags()
    parser = cli.flags_parser(program, check_first=check_run_flags, define_rest=define_flags,
                              help_text=lambda: help_text(program))
    app.run(cli.main_for(program, run), flags_parser=parser)


if __name__ == "__main__":
    main("spml_tf.train")
