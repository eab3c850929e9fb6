"""`from spml_tf import losses` then `losses.get("em", alpha=0.1)`, as the README shows: the losses live in
spml_tf/methods (one module per family; its __init__ is the registry)."""

from spml_tf.methods import *  # noqa: F401,F403
from spml_tf.methods import FAMILIES, HYPERPARAMETERS, LOSSES, for_config, get, lookup  # noqa: F401
