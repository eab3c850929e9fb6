"""The tf.data pipelines and the label bank as the loss sees it during model.fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import raw_fixtures
from spml_tf import methods as losses
from spml_tf.data import datasets, pipeline
from spml_tf.core.errors import DataError
from spml_tf.training.label_bank import LabelBank


@pytest.fixture(scope="module")
def splits(tiny_digits_dir):
    return datasets.load("digits", tiny_digits_dir)


def test_decode_and_resize_eager_equals_tf_data():
    image = np.random.RandomState(0).randint(0, 256, size=(20, 30, 3), dtype=np.uint8)
    encoded = tf.io.encode_png(image)
    eager = pipeline.decode_and_resize(encoded, 16).numpy()
    in_graph = next(iter(tf.data.Dataset.from_tensors(encoded).map(lambda e: pipeline.decode_and_resize(e, 16))))
    np.testing.assert_array_equal(eager, in_graph.numpy())
    assert eager.shape == (16, 16, 3) and eager.dtype == np.float32
    # PIL's filter (bench/resize.py): bilinear widened when shrinking (antialias), rounded to whole levels.
    np.testing.assert_array_equal(pipeline.decode_and_resize(encoded, 20).numpy(),
                                  np.round(tf.image.resize(image, [20, 20], antialias=True).numpy()))


def test_jpegs_decode_to_pils_pixels():
    """libjpeg's accurate integer DCT, as PIL decodes: the same pixels exactly (TensorFlow's default differs)."""
    import io

    from PIL import Image

    image = np.clip(np.random.RandomState(1).normal(128, 60, size=(37, 53, 3)), 0, 255).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
    with Image.open(io.BytesIO(jpeg)) as pil:
        expected = np.asarray(pil.convert("RGB"))
    np.testing.assert_array_equal(pipeline.decode(jpeg).numpy(), expected)
    assert not np.array_equal(tf.io.decode_jpeg(jpeg).numpy(), expected)  # the default DCT: why it is chosen


def test_an_image_already_at_the_size_is_not_resized():
    """The skipped resize is exact: bilinear resizing to the same size returns the image."""
    image = np.random.RandomState(0).randint(0, 256, size=(12, 12, 3), dtype=np.uint8)
    encoded = tf.io.encode_png(image)
    decoded = pipeline.decode_and_resize(encoded, 12).numpy()
    np.testing.assert_array_equal(decoded, image.astype(np.float32))
    np.testing.assert_allclose(decoded, tf.image.resize(image, [12, 12], antialias=True).numpy(), atol=1e-4)


def test_eval_dataset_is_ordered_and_complete(splits):
    labels = pipeline.read_labels(splits.val)
    indices = np.concatenate([index.numpy() for _, index in pipeline.make_eval_dataset(splits.val, 32, 16)])
    np.testing.assert_array_equal(indices, labels.order)
    np.testing.assert_array_equal(np.sort(indices), np.arange(splits.val.num_examples))


def _epochs(dataset, manifest, batch_size):
    """The index order of each epoch of a multi-epoch train dataset."""
    per_epoch = pipeline.batches_per_epoch(manifest, batch_size)
    batches = [index.numpy() for _, index in dataset]
    return [np.concatenate(batches[i : i + per_epoch]) for i in range(0, len(batches), per_epoch)]


def test_train_dataset_sees_every_example_once_per_epoch(splits):
    dataset = pipeline.make_train_dataset(splits.train, 32, 16, random_flip=True, seed=0, epochs=3)
    epochs = _epochs(dataset, splits.train, 16)
    assert len(epochs) == 3
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(splits.train.num_examples))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    images, _ = next(iter(dataset))
    assert images.shape[1:] == (32, 32, 3)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert len(splits.train.shards) > 1  # the interleave really mixes several shards


def test_a_resumed_train_dataset_meets_the_same_batches(splits):
    """Deterministic: epoch e depends on (seed, e) only, so starting at epoch 2 gives epochs 2 and 3 unchanged."""
    def images_and_order(first_epoch):
        dataset = pipeline.make_train_dataset(splits.train, 16, 16, random_flip=True, seed=7, epochs=3,
                                              first_epoch=first_epoch, deterministic=True)
        batches = list(dataset)
        return np.concatenate([i.numpy() for i, _ in batches]), np.concatenate([x.numpy() for _, x in batches])

    whole_images, whole_order = images_and_order(0)
    resumed_images, resumed_order = images_and_order(1)
    n = splits.train.num_examples
    np.testing.assert_array_equal(resumed_order, whole_order[n:])
    np.testing.assert_array_equal(resumed_images, whole_images[n:])  # flips included


def test_read_labels_matches_the_build(splits):
    labels = pipeline.read_labels(splits.train)
    assert labels.full.shape == (splits.train.num_examples, 10)
    np.testing.assert_array_equal(labels.observed.sum(axis=1), 1.0)  # one observed positive per image
    assert (labels.full[labels.observed == 1] == 1).all()  # and it is a true positive
    assert labels.image_ids[0].startswith(b"digits_train_")


def test_corrupt_labels_are_refused(tmp_path):
    manifest = raw_fixtures.write_split(
        str(tmp_path), dataset="toy", split="train", class_names=("a", "b"),
        examples=[(tf.io.encode_png(np.zeros((2, 2, 3), np.uint8)).numpy(), "x", [1.0, 0.0], [2.0, 0.0])],
    )
    with pytest.raises(DataError, match="label/observed.*2.0"):
        pipeline.read_labels(manifest)


class _MeanLabel(losses.SPMLLoss):
    """A probe: its value is the mean label the loss was given (logits only keep it differentiable)."""

    def __init__(self):
        super().__init__(name="probe")

    def entry_terms(self, labels, logits):
        return labels + 0.0 * logits


class _Flip(keras.callbacks.Callback):
    def __init__(self, bank):
        super().__init__()
        self.bank = bank

    def on_epoch_end(self, epoch, logs=None):
        self.bank.assign(np.full(self.bank.shape, 1.0 if epoch % 2 == 0 else 0.0, np.float32))


class _BatchLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append([])

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1].append(float(logs["loss"]))


def test_every_step_sees_the_current_bank_with_repeat_and_prefetch():
    """An assignment between epochs is seen by every batch after it, with .repeat() + steps_per_epoch."""
    num_examples, num_classes = 64, 3
    images = np.random.RandomState(0).rand(num_examples, 4, 4, 3).astype(np.float32)
    dataset = (tf.data.Dataset.from_tensor_slices((images, np.arange(num_examples)))
               .shuffle(num_examples).repeat().batch(4).prefetch(8))
    bank = LabelBank(np.zeros((num_examples, num_classes), np.float32))
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
    model.compile(optimizer="sgd", loss=losses.LabelBankLoss(_MeanLabel(), bank))
    record = _BatchLosses()
    model.fit(dataset, epochs=4, steps_per_epoch=8, callbacks=[_Flip(bank), record], verbose=0, shuffle=False)
    for epoch, batch_losses in enumerate(record.per_epoch):
        expected = 0.0 if epoch % 2 == 0 else 1.0
        np.testing.assert_allclose(batch_losses, expected, atol=1e-7, err_msg=f"epoch {epoch + 1} saw stale labels")


def test_label_bank_lookup_handles_float_indices():
    labels = -np.arange(12, dtype=np.float32).reshape(6, 2) / 24.0
    labels[0] = 1.0
    bank = LabelBank(labels)
    np.testing.assert_array_equal(bank.lookup(tf.constant([5.0, 0.0, 2.0])).numpy(), labels[[5, 0, 2]])
    with pytest.raises(ValueError, match="shape"):
        bank.assign(np.zeros((5, 2)))
    with pytest.raises(DataError, match="outside the encoding"):
        bank.assign(np.full((6, 2), 2.0))
