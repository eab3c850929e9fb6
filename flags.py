"""Every command-line flag of train_main.py: defined in the package (spml_tf/train.py), which the installed
`spml-train` command shares; importing this module defines them, as `import flags` did in a clone."""

from spml_tf import train as _train

_train.define_flags()
FLAGS, config_from_flags = _train.FLAGS, _train.config_from_flags
