"""The names a training run chooses from, and how a method is named: known without importing TensorFlow, so
the command line refuses a wrong name at once (spml_tf/train.py checks them before anything else is loaded).

A method is its loss's name, or `<loss>+boostlu` for the loss on BoostLU's head (the README's tables, the
benchmarks, --loss and results.json's "method" all write it so). tests/test_config.py checks LOSSES against
the registry of spml_tf/methods.
"""

from spml_tf.core.errors import UsageError, did_you_mean

DATASETS = ("digits", "voc", "coco", "nuswide", "cub", "custom")
LABEL_VARIANTS = ("observed", "clean")
BACKBONES = ("resnet50", "keras_resnet50", "small_cnn")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
MIXED_PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
HEADS = ("linear", "boostlu")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("full", "an", "an_ls", "wan", "epr", "role", "em", "em_apl", "ll_r", "ll_ct", "ll_cp", "gr", "gr_apl",
          "vlpl", "aevlp")
PROGRESS = ("auto", "bar", "lines", "none")
VL_POSITIVES = ("auto", "none", "vlpl", "aevlp")
HUB_PREFIX = "hub:"  # --backbone=hub:<a KerasHub preset>

# The flags whose value is one of a list, by flag name.
CHOICES = {"dataset": DATASETS, "train_set_variant": LABEL_VARIANTS, "val_set_variant": LABEL_VARIANTS,
           "backbone": BACKBONES, "strategy": STRATEGIES, "mixed_precision": MIXED_PRECISIONS, "head": HEADS,
           "optimizer": OPTIMIZERS, "loss": LOSSES, "progress": PROGRESS, "vl_positives": VL_POSITIVES}


def check(flag, value, known=None):
    """UsageError `--flag='x' is not one of a, b, c; did you mean 'b'?` unless `value` is known."""
    known = CHOICES[flag] if known is None else known
    if flag == "backbone" and str(value).startswith(HUB_PREFIX):  # any KerasHub preset (spml_tf/nets/hub.py)
        return
    if value not in known:
        raise UsageError(f"--{flag}={value!r} is not one of {', '.join(known)}{did_you_mean(value, known)}")


def split_method(name, head=None):
    """(loss, head) of a method name: `em_apl` -> (em_apl, head), `em_apl+boostlu` -> (em_apl, boostlu).

    `head` is what --head says (None: not given); a method naming another head than --head is a UsageError.
    """
    loss, plus, named_head = name.partition("+")
    if not plus:
        return loss, head
    check("head", named_head, HEADS)
    if head is not None and head != named_head:
        raise UsageError(f"--loss={name} names the {named_head} head but --head={head}: give one of them")
    return loss, named_head


def method_name(loss, head):
    """The name of a method: the loss's, with `+<head>` for another head than the linear one."""
    return loss if head == "linear" else f"{loss}+{head}"
