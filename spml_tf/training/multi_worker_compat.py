"""A narrow fix that lets `model.fit` run under MultiWorkerMirroredStrategy with Keras 3.

Keras 3 (measured: 3.15.1; upstream keras-team/keras#20585) fails twice there:
1. `fit` builds the model symbolically from the first batch, which it first
   "reduces" over the workers with `strategy.reduce("MEAN", batch)`; the
   collective reduce cannot take the dataset's per-replica values
   ("Attempt to convert a value (PerReplica...)"). The build needs only the
   batch's structure and shapes, so we take this replica's part of it.
2. Every step it averages the logged scalars over workers with
   `strategy.reduce("MEAN", value, axis=0)`, and a scalar has no axis 0
   ("Invalid reduction dimension 0"). Scalars are reduced with axis=None.

`apply()` patches exactly these two functions, once, and only for the Keras
versions checked here; both patched functions defer to the originals for any
other strategy. tests/test_distribute.py runs two workers without the patch
and expects the failure: when an upgrade fixes Keras, that test fails and
says the patch can go.
"""

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

CHECKED_VERSIONS = ("3.15.",)  # the Keras versions this fix is tested with
_applied = False


def needed():
    return keras.__version__.startswith(CHECKED_VERSIONS)


def apply():
    """Patches Keras's TensorFlow trainer for multi-worker training (a no-op for versions it was not checked with)."""
    global _applied
    if _applied or not needed():
        return
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not _multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:  # as the original; fit resets the iterator afterwards
            batch = next(it)
            data_batch = tree.map_structure(lambda value: strategy.experimental_local_results(value)[0], batch)
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if not _multi_worker(strategy) or reduction not in ("auto", "mean"):
            return original_reduce(values, strategy, reduction)

        def reduce(value):
            axis = None if value.shape.rank == 0 else 0
            return strategy.reduce("MEAN", value, axis=axis)

        return tree.map_structure(reduce, values)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _applied = True


def _multi_worker(strategy):
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())
