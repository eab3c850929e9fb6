"""Every command-line flag of train_main.py: defined in the package (spml_tf/train_cli.py), which the installed
`spml-train` command shares; this module keeps `import flags` working in a clone."""

from spml_tf.train_cli import CONFIG_FLAGS, FLAGS, config_from_flags  # noqa: F401  (importing it defines the flags)
