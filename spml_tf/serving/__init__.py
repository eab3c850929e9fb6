"""A finished run in use: the SavedModel export for TF Serving (export), predicting image files with it
(predict), and the run as a Python object (classifier).

Imports spml_tf.training (a run's files), spml_tf.nets, spml_tf.data and spml_tf.core.
"""
