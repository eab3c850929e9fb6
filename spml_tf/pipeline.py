"""tf.data input pipelines over TFRecord shards: parallel, prefetched, no Python per example.

Images leave the pipeline as float32 in [0, 255] at the model's input size;
normalisation is the model's first layer, so it runs on the accelerator and
the exported SavedModel applies exactly the same one. Labels do not travel
with the images: each element is (image, example index) and the loss reads the
labels from the label bank at step time, so APL updates are seen at once.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from spml_tf import labels, records
from spml_tf.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
# Serialized records are shuffled before decoding: cheap to hold, and a
# buffer of this size mixes shards that the interleave reads in parallel.
SHUFFLE_BUFFER = 4096
LABEL_BATCH = 4096


def decode_and_resize(encoded, image_size):
    """Encoded JPEG/PNG bytes -> float32 [image_size, image_size, 3] in [0, 255]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size])  # bilinear, returns float32
    return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_for_eval(example, image_size):
    return decode_and_resize(example["image/encoded"], image_size), example["example/index"]


def preprocess_for_train(example, image_size, random_flip):
    image, index = preprocess_for_eval(example, image_size)
    if random_flip:
        image = tf.image.random_flip_left_right(image)
    return image, index


def make_train_dataset(manifest, image_size, batch_size, random_flip, seed):
    """Shuffled, augmented (image, index) batches; one pass is one epoch, reshuffled every epoch."""
    num_classes = manifest.num_classes
    files = tf.data.Dataset.from_tensor_slices(manifest.shard_paths).shuffle(len(manifest.shards), seed=seed)
    dataset = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(manifest.shards), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=False,
    )
    dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda serialized: preprocess_for_train(records.parse_examples(serialized, num_classes), image_size, random_flip),
        num_parallel_calls=AUTOTUNE,
        deterministic=False,
    )
    return _batch(dataset, manifest, batch_size)


def with_index_as_input(dataset):
    """(image, index) -> ((image, index), index), for a model that also reads the index (ROLE's estimator)."""

    def image_and_index(image, index):
        return (image, index), index

    return dataset.map(image_and_index, num_parallel_calls=AUTOTUNE)


def make_eval_dataset(manifest, image_size, batch_size):
    """(image, index) batches in file order, without augmentation: prediction is reproducible and ordered."""
    num_classes = manifest.num_classes
    # Reading shards one after the other (no parallel interleave) keeps the
    # order fixed; decoding, the expensive part, still runs in parallel.
    dataset = tf.data.TFRecordDataset(manifest.shard_paths)
    dataset = dataset.map(
        lambda serialized: preprocess_for_eval(records.parse_examples(serialized, num_classes), image_size),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return _batch(dataset, manifest, batch_size)


def _batch(dataset, manifest, batch_size):
    # TFRecord files hide their size; stating it lets Keras draw a full
    # progress bar from the first epoch, and fails loudly if a shard is short.
    num_batches = -(-manifest.num_examples // batch_size)
    return dataset.batch(batch_size).apply(tf.data.experimental.assert_cardinality(num_batches)).prefetch(AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class SplitLabels:
    """A split's labels in example-index order, and the order in which the eval pipeline yields examples."""

    order: np.ndarray  # order[i] = example index of the i-th element of make_eval_dataset
    full: np.ndarray  # N x C in {0, 1}
    observed: np.ndarray  # N x C in {-1, 0, 1}
    image_ids: np.ndarray  # N source ids (bytes)


def read_labels(manifest):
    """Reads every label of a split (no image is decoded) and checks them."""
    spec = records.feature_spec(manifest.num_classes)
    del spec["image/encoded"]
    dataset = tf.data.TFRecordDataset(manifest.shard_paths).batch(LABEL_BATCH)
    dataset = dataset.map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=AUTOTUNE)
    parts = {key: [] for key in spec}
    try:
        for batch in dataset.as_numpy_iterator():
            for key in spec:
                parts[key].append(batch[key])
    except tf.errors.OpError as error:
        raise DataError(f"cannot read the shards of {manifest.directory}: {error.message}") from None
    num_examples = manifest.num_examples
    order = np.concatenate(parts["example/index"]) if parts["example/index"] else np.zeros(0, np.int64)
    if len(order) != num_examples or not np.array_equal(np.sort(order), np.arange(num_examples)):
        raise DataError(
            f"{manifest.directory}: the shards hold {len(order)} examples whose example/index is not "
            f"0..{num_examples - 1} each exactly once, as the manifest says"
        )
    inverse = np.empty_like(order)
    inverse[order] = np.arange(num_examples)

    def in_index_order(key):
        return np.concatenate(parts[key])[inverse]

    full, observed = in_index_order("label/full"), in_index_order("label/observed")
    labels.check_label_matrix(full, f"{manifest.directory}: label/full", allowed=(0, 1))
    # -1 marks an observed negative (datasets made with --observed_negatives).
    labels.check_label_matrix(observed, f"{manifest.directory}: label/observed", allowed=(-1, 0, 1))
    return SplitLabels(order=order, full=full, observed=observed, image_ids=in_index_order("image/id"))
