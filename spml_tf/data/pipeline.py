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

from spml_tf.data import image_limits, labels, records
from spml_tf.core.errors import DataError, reason

AUTOTUNE = tf.data.AUTOTUNE
# Serialized records are shuffled before decoding: cheap to hold, and a
# buffer of this size mixes shards that the interleave reads in parallel.
SHUFFLE_BUFFER = 4096
LABEL_BATCH = 4096
REPAIR_HINT = "Convert the dataset again: the converter rewrites damaged shards"


def decode(encoded, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Encoded image bytes -> uint8 [height, width, 3], once the header is known to declare at most `max_pixels`
    in a format whose size it gives (image_limits: else InvalidArgumentError, before anything is decoded).

    JPEGs with libjpeg's accurate integer DCT, which is what PIL (the original
    code's loader) uses: the pixels then equal PIL's exactly (TensorFlow's
    default DCT differs by up to 4 levels). Other formats as TensorFlow decodes them (an animation: its first
    frame).
    """
    encoded = image_limits.checked(encoded, max_pixels)
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                   lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def decode_and_resize(encoded, image_size, max_pixels=image_limits.DEFAULT_MAX_PIXELS):
    """Encoded JPEG/PNG bytes -> float32 [image_size, image_size, 3] in [0, 255]: the original preprocessing.

    The original resizes with PIL's bilinear filter (torchvision's
    `Resize((448, 448))`), which widens its kernel when it shrinks, and keeps
    uint8 pixels. `tf.image.resize` with `antialias` does the same filtering;
    rounded to integers it is within 1 level of PIL's result everywhere, 0.19
    on average, on VOC-sized photos (bench/resize.py; without antialias up to
    14 levels). An image already at the size (converted with --resize_to)
    skips the resize, which would return it unchanged: half the CPU time per image.
    An image whose header declares more than `max_pixels` fails before it is
    decoded: in training too, since a shard's bytes are only as safe as whoever made the shard.
    """
    image = decode(encoded, max_pixels)
    same_size = tf.reduce_all(tf.shape(image)[:2] == image_size)
    image = tf.cast(image, tf.float32)  # the antialiased resize runs a third faster on float32 than on uint8
    image = tf.cond(same_size, lambda: image,
                    lambda: tf.round(tf.image.resize(image, [image_size, image_size], antialias=True)))
    return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_for_eval(example, image_size):
    return decode_and_resize(example["image/encoded"], image_size), example["example/index"]


def preprocess_for_train(example, image_size, random_flip, seed):
    """Decode, resize and (random_flip) flip; the flip is a function of (seed, example index), not of the order."""
    image, index = preprocess_for_eval(example, image_size)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([tf.constant(seed, tf.int64), index]))
    return image, index


def make_train_dataset(manifest, image_size, batch_size, random_flip, seed, epochs=1, first_epoch=0,
                       deterministic=False):
    """Shuffled, augmented (image, index) batches of epochs first_epoch+1 .. epochs, one epoch after the other.

    Epoch e's shuffle and flips are seeded by (seed, e) alone, so a run resumed
    at epoch e meets the batches an uninterrupted run meets. With
    `deterministic`, the parallel reads and decodes also keep their order
    (slightly slower); otherwise whichever element is ready first goes first.
    """
    num_classes, paths = manifest.num_classes, manifest.shard_paths

    def one_epoch(epoch):
        epoch_seed = seed * 1_000_003 + epoch
        files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=epoch_seed)
        dataset = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(paths), 8),
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic,
        )
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=epoch_seed)
        dataset = dataset.map(
            lambda serialized: preprocess_for_train(
                records.parse_examples(serialized, num_classes), image_size, random_flip, epoch_seed),
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic,
        )
        return dataset.batch(batch_size)  # batches never straddle two epochs

    # Python ints as seeds (tf.data's shuffle takes a tensor seed badly), so one dataset per epoch, chained.
    dataset = one_epoch(first_epoch)
    for epoch in range(first_epoch + 1, epochs):
        dataset = dataset.concatenate(one_epoch(epoch))
    if first_epoch >= epochs:
        dataset = dataset.take(0)
    num_batches = (epochs - first_epoch) * batches_per_epoch(manifest, batch_size)
    return _shard_by_data(dataset.apply(tf.data.experimental.assert_cardinality(num_batches)).prefetch(AUTOTUNE))


def _shard_by_data(dataset):
    """Under multi-worker training each worker keeps every k-th batch of the same stream (which must then be
    ordered the same on every worker), rather than whole shard files, which would leave workers with different
    numbers of batches."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def batches_per_epoch(manifest, batch_size):
    return -(-manifest.num_examples // batch_size)


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
    num_batches = batches_per_epoch(manifest, batch_size)
    batches = dataset.batch(batch_size).apply(tf.data.experimental.assert_cardinality(num_batches))
    return _shard_by_data(batches.prefetch(AUTOTUNE))


@dataclasses.dataclass(frozen=True)
class SplitLabels:
    """A split's labels in example-index order, and the order in which the eval pipeline yields examples."""

    order: np.ndarray  # order[i] = example index of the i-th element of make_eval_dataset
    full: np.ndarray  # N x C in {0, 1}
    observed: np.ndarray  # N x C in {-1, 0, 1}
    image_ids: np.ndarray  # N source ids (bytes)


def _labels_spec(num_classes):
    """The parsing spec of every feature but the image: labels, id and index, read without touching image bytes."""
    spec = records.feature_spec(num_classes)
    del spec["image/encoded"]
    return spec


def read_labels(manifest, repair_hint=REPAIR_HINT):
    """Reads every label of a split (no image is decoded) and checks them; `repair_hint` tells how to fix a
    damaged shard."""
    spec = _labels_spec(manifest.num_classes)
    dataset = tf.data.TFRecordDataset(manifest.shard_paths).batch(LABEL_BATCH)
    dataset = dataset.map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=AUTOTUNE)
    parts = {key: [] for key in spec}
    try:
        for batch in dataset.as_numpy_iterator():
            for key in spec:
                parts[key].append(batch[key])
    except tf.errors.OpError as error:
        raise explain_read_error(manifest, error, repair_hint) from None
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


def explain_read_error(manifest, error, repair_hint=REPAIR_HINT):
    """A DataError naming what failed to read: the damaged shard, or the images (by image/id) that do not decode.

    Only called once reading has failed, so it can afford to look at every shard again.
    """
    for path in manifest.shard_paths:
        problem = _shard_problem(path, manifest.num_classes)
        if problem:
            return DataError(f"{path} is damaged ({problem}). {repair_hint}")
    bad = _undecodable_images(manifest)
    too_large = [image_id for image_id, problem in bad if problem]
    if too_large:
        return DataError(f"{len(too_large)} image(s) in {manifest.directory} declare more than "
                         f"{image_limits.DEFAULT_MAX_PIXELS:,} pixels and were not decoded: {_listed(too_large)}")
    if bad:
        return DataError(f"{len(bad)} image(s) in {manifest.directory} do not decode: "
                         f"{_listed([image_id for image_id, _ in bad])}")
    return DataError(f"reading {manifest.directory} failed: {reason(error)}")


def _shard_problem(path, num_classes):
    """Why the records of one shard cannot be read or parsed (CRC, truncation, a label of the wrong length), or None."""
    spec = _labels_spec(num_classes)
    try:
        for _ in tf.data.TFRecordDataset(path).batch(LABEL_BATCH).map(lambda s: tf.io.parse_example(s, spec)):
            pass
    except tf.errors.OpError as error:
        return reason(error)
    return None


def _listed(image_ids):
    return ", ".join(image_id.decode() for image_id in image_ids[:10]) + (" ..." if len(image_ids) > 10 else "")


def _undecodable_images(manifest):
    """[(image/id, why it is too large or None)] of the images that do not decode: those an error-skipping decode
    pass does not return; the size their headers declare is read again for each."""
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string), "image/id": tf.io.FixedLenFeature([], tf.string)}

    def decode_example(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        return example["image/id"], tf.shape(decode(example["image/encoded"]))  # the size checked first

    records_ = tf.data.TFRecordDataset(manifest.shard_paths)
    decoded = {image_id for image_id, _ in records_.map(decode_example, num_parallel_calls=AUTOTUNE).ignore_errors()
               .as_numpy_iterator()}
    bad = []
    for example in records_.map(lambda s: tf.io.parse_single_example(s, spec)).as_numpy_iterator():
        if example["image/id"] not in decoded:
            bad.append((example["image/id"],
                        image_limits.problem(example["image/encoded"], image_limits.DEFAULT_MAX_PIXELS)))
    return bad
