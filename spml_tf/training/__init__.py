"""A training run: the trainer as named steps (trainer), the label bank, the optimizers, distribution over
devices and workers, evaluation and metrics, checkpoints, the run directory and its results.json.

Imports spml_tf.methods, spml_tf.nets, spml_tf.data and spml_tf.core.
"""
