"""The methods: each family of losses is one module, and this registry lists them.

A family module (cole.py, em.py, ll.py, gr.py, vl.py) holds its Loss classes (base.SPMLLoss), its callbacks, its
`HYPERPARAMETERS` (base.Hyperparameter: each a Config field and a `--<name>` flag of the training command,
with its help, its check and its per-dataset values) and, where its authors fix one, `protocol(loss, head,
dataset)`: the settings their code trains with on the paper's datasets, each value beside the file it comes
from. Config, the command line and this registry are built from these declarations, so a new method is one
new module and one entry in FAMILIES below (docs/method.md, "Adding a method").

Imports spml_tf.core only (and Keras, TensorFlow, NumPy): never data, nets or training.
"""

from spml_tf.core.errors import UsageError, did_you_mean
from spml_tf.methods import cole, em, gr, ll, vl
from spml_tf.methods.base import (EpochSchedule, Hyperparameter, LabelBankLoss, SPMLLoss, TrainingContext,
                                  global_mean)
from spml_tf.methods.cole import (AssumeNegative, ExpectedPositiveRegularization, FullLabels, LabelSmoothing,
                                  RegularizedOnlineLabelEstimation, WeakAssumeNegative, expected_positive_penalty)
from spml_tf.methods.em import EntropyMaximization, EntropyMaximizationAPL
from spml_tf.methods.gr import GeneralizedRobust, GeneralizedRobustAPL, gr_schedule
from spml_tf.methods.ll import (LargeLossCorrectionPermanent, LargeLossCorrectionTemporary, LargeLossRejection,
                                ll_rejection_rate)
from spml_tf.methods.vl import (GeneralizedPseudoLabelRobust, VisionLanguagePseudoLabels, aevlp_positives,
                                positives_for, vlpl_positives)

FAMILIES = (cole, em, ll, gr, vl)  # the one list to extend
PAPER_DATASETS = ("voc", "coco", "nuswide", "cub")  # where the authors' protocols apply

# Every loss, by its --loss name, in the families' order.
LOSSES = {loss.key: loss for family in FAMILIES for loss in family.LOSSES}
# Every hyper-parameter of every family, by name (a family may reuse another's: gr_apl takes em's beta).
HYPERPARAMETERS = {parameter.name: parameter for family in FAMILIES for parameter in family.HYPERPARAMETERS}


def protocol(loss, head, dataset):
    """The Config fields the authors' protocol of `loss` (with `head`) sets on `dataset` ({} where the dataset's
    preset stands: the paper's own methods, and every method on digits and a user's data)."""
    if dataset not in PAPER_DATASETS:
        return {}
    settings = {}
    for family in FAMILIES:
        if hasattr(family, "protocol"):
            settings.update(family.protocol(loss, head, dataset))
    return settings


def lookup(name):
    """The loss class called `name`; UsageError naming the known ones otherwise."""
    if name not in LOSSES:
        raise UsageError(f"--loss={name!r} is not one of {', '.join(LOSSES)}{did_you_mean(name, LOSSES)}")
    return LOSSES[name]


def get(name, **hyperparameters):
    """A ready Loss by name, e.g. get("em_apl", alpha=0.2, beta=0.02), for any model's compile (ValueError for an
    unknown name)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](**hyperparameters)


def for_config(config):
    """The Loss a training Config asks for, with its hyper-parameters from the Config; UsageError if the Config
    contradicts it."""
    loss_class = lookup(config.loss)
    loss_class.check_config(config)
    return loss_class(**{field: getattr(config, field) for field in loss_class.hyperparameters})
