"""A training run: the trainer as named steps (trainer), the label bank, the optimizers, distribution over
devices and workers, evaluation and metrics, checkpoints, the run directory and its results.json, the progress of
fit (fit_progress), and CLIP's pseudo-positives: the scores computed once before training (vl_scores) and the
matrix a run reads (vl_positives).

Imports spml_tf.methods, spml_tf.nets, spml_tf.data and spml_tf.core.
"""
