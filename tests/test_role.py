"""ROLE's label estimator and training model: initialisation, outputs, 10x learning rate, a short fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from spml_tf import methods as losses
from spml_tf.methods import cole
from spml_tf.training.label_bank import LabelBank

POSITIVE_LOGIT = np.log(0.995 / 0.005)  # logit(0.995) = 5.293
INIT_RANGE = np.log(0.6 / 0.4)  # logit(0.6) = 0.405
NEGATIVE_LOGIT = np.log(0.005 / 0.995)  # logit(0.005), Cole et al.'s start at annotated negatives

# Keras Adam defaults.
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


def observed_labels(num_examples, num_classes, seed=0, negatives=False):
    """One annotated positive per row; optionally some annotated negatives (-1)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((num_examples, num_classes), dtype=np.float32)
    positive = rng.integers(0, num_classes, num_examples)
    labels[np.arange(num_examples), positive] = 1.0
    if negatives:
        labels[np.arange(num_examples), (positive + 1) % num_classes] = -1.0
    return labels


def tiny_classifier(num_classes, image_size=8):
    """An image -> logits model small enough to fit in a test."""
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def numpy_adam_first_step(gradient, learning_rate):
    """The displacement of Keras's Adam on its first step, written out in float64."""
    gradient = np.asarray(gradient, dtype=np.float64)
    m = (1.0 - BETA_1) * gradient
    v = (1.0 - BETA_2) * gradient**2
    alpha = learning_rate * np.sqrt(1.0 - BETA_2) / (1.0 - BETA_1)
    return -alpha * m / (np.sqrt(v) + EPSILON)


# --- Initialisation ------------------------------------------------------------------


def test_initial_logits_follow_spec():
    """logit(0.995) at annotated positives, uniform in (-logit(0.6), logit(0.6)) elsewhere, float32."""
    observed = observed_labels(2000, 6)
    initial = cole.initial_estimator_logits(observed, seed=0)
    assert initial.shape == observed.shape and initial.dtype == np.float32
    positive = observed == 1.0
    np.testing.assert_allclose(initial[positive], POSITIVE_LOGIT, rtol=1e-6)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-initial[positive].astype(np.float64))), 0.995, rtol=1e-6)

    rest = initial[~positive].astype(np.float64)
    assert np.all(np.abs(rest) <= INIT_RANGE)
    # Uniform on the whole interval: edges reached, mean 0, variance R^2 / 3.
    assert rest.min() < -0.99 * INIT_RANGE and rest.max() > 0.99 * INIT_RANGE
    assert abs(rest.mean()) < 0.01
    np.testing.assert_allclose(rest.std(), INIT_RANGE / np.sqrt(3.0), rtol=0.02)
    counts, _ = np.histogram(rest, bins=4, range=(-INIT_RANGE, INIT_RANGE))
    np.testing.assert_allclose(counts / rest.size, 0.25, atol=0.02)


def test_initial_logits_are_deterministic_for_a_seed():
    """The same seed gives the same matrix; another seed changes only the unannotated entries."""
    observed = observed_labels(50, 4)
    first = cole.initial_estimator_logits(observed, seed=7)
    np.testing.assert_array_equal(first, cole.initial_estimator_logits(observed, seed=7))
    other = cole.initial_estimator_logits(observed, seed=8)
    positive = observed == 1.0
    np.testing.assert_array_equal(first[positive], other[positive])
    assert np.all(first[~positive] != other[~positive])


def test_initial_logits_at_annotated_negatives_are_logit_0_005():
    """An annotated negative (-1) starts at logit(0.005), as in Cole et al.'s LabelEstimator."""
    observed = observed_labels(20, 5, negatives=True)
    initial = cole.initial_estimator_logits(observed, seed=0)
    np.testing.assert_allclose(initial[observed == -1.0], NEGATIVE_LOGIT, rtol=1e-6)
    assert np.all(np.abs(initial[observed == 0.0]) <= INIT_RANGE)


# --- The training model --------------------------------------------------------------


def test_with_label_estimator_outputs_classifier_then_estimator_rows():
    """Output is [classifier(image) | initial estimator logits of the given example indices]."""
    num_classes = 5
    observed = observed_labels(12, num_classes, negatives=True)
    classifier = tiny_classifier(num_classes)
    trainer = cole.with_label_estimator(classifier, observed, seed=3)
    images = np.random.default_rng(1).uniform(0, 255, size=(4, 8, 8, 3)).astype(np.float32)
    index = np.array([7, 0, 7, 11], dtype=np.int64)  # unsorted, with a repeat

    outputs = np.asarray(trainer([images, index]))
    assert outputs.shape == (4, 2 * num_classes)
    np.testing.assert_allclose(outputs[:, :num_classes], np.asarray(classifier(images)), rtol=1e-6, atol=1e-6)
    initial = cole.initial_estimator_logits(observed, seed=3)
    np.testing.assert_allclose(outputs[:, num_classes:], initial[index], rtol=1e-6, atol=1e-7)

    # Trainable: the classifier's weights and one N x C estimator matrix.
    extra = [w for w in trainer.trainable_weights if all(w is not c for c in classifier.trainable_weights)]
    assert len(extra) == 1 and tuple(extra[0].shape) == observed.shape


# --- The 10x learning rate -----------------------------------------------------------


def test_estimator_adam_step_is_ten_times_a_plain_adam_step():
    """One Adam(1e-3) step on the trainer moves the estimator logits 10x a plain Adam(1e-3) step.

    Adam's step m_hat / (sqrt(v_hat) + eps) ignores the gradient's scale up to
    eps = 1e-7: the stored logits / 10 get a 10x gradient, so eps weighs 10x
    less than for a plain variable. With |gradient| >= 0.1 that is < 1e-7 in
    the logits, far inside the 1e-5 tolerance (the step itself is 1e-2).
    """
    num_classes = 4
    observed = observed_labels(10, num_classes)
    trainer = cole.with_label_estimator(tiny_classifier(num_classes), observed, seed=5)
    initial = cole.initial_estimator_logits(observed, seed=5)
    images = np.zeros((3, 8, 8, 3), dtype=np.float32)
    index = np.array([2, 5, 9], dtype=np.int64)
    rng = np.random.default_rng(2)
    weights = (rng.uniform(0.1, 1.0, size=(3, num_classes)) * rng.choice([-1.0, 1.0], size=(3, num_classes)))
    weights = weights.astype(np.float32)  # d(loss)/d(estimator logits) of the rows in `index`

    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(weights * trainer([images, index])[:, num_classes:])
    variables = trainer.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
    estimator = trainer.get_layer("label_estimator")
    after = np.asarray(estimator(np.arange(10)))

    expected = initial.astype(np.float64).copy()
    expected[index] += 10.0 * numpy_adam_first_step(weights, learning_rate=1e-3)
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-5)
    moved = after[index] - initial[index]
    np.testing.assert_allclose(np.abs(moved), 1e-2, rtol=1e-3)  # not 1e-3: the 10x is there
    untouched = np.setdiff1d(np.arange(10), index)
    np.testing.assert_allclose(after[untouched], initial[untouched], rtol=1e-6)


@pytest.mark.parametrize("lr_multiplier", [1.0, 3.0, 10.0])
def test_label_estimator_steps_like_adam_at_the_multiplied_rate(lr_multiplier):
    """LabelEstimator(lr_multiplier=m) under Adam(1e-3) moves as a plain variable under Adam(m * 1e-3)."""
    observed = observed_labels(6, 3)
    initial = cole.initial_estimator_logits(observed, seed=1)
    index = np.array([4, 1], dtype=np.int64)
    weights = np.array([[0.5, -0.2, 1.0], [-0.8, 0.3, 0.15]], dtype=np.float32)

    estimator = cole.LabelEstimator(initial, lr_multiplier=lr_multiplier)
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(weights * estimator(index))
    optimizer.apply_gradients(zip(tape.gradient(value, estimator.trainable_variables), estimator.trainable_variables))

    plain = tf.Variable(initial)
    plain_optimizer = keras.optimizers.Adam(learning_rate=lr_multiplier * 1e-3)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(weights * tf.gather(plain, index))
    plain_optimizer.apply_gradients([(tape.gradient(value, plain), plain)])

    np.testing.assert_allclose(np.asarray(estimator(np.arange(6))), plain.numpy(), rtol=0, atol=1e-5)
    assert np.abs(plain.numpy() - initial).max() > 0.9 * lr_multiplier * 1e-3


# --- A short fit ---------------------------------------------------------------------


def test_role_trainer_fit_moves_the_classifier_and_only_the_rows_it_saw():
    """Two fit steps on ((image, index), index): classifier weights move; estimator rows move once seen."""
    keras.utils.set_random_seed(0)
    num_examples, num_classes = 16, 5
    observed = observed_labels(num_examples, num_classes, negatives=True)
    classifier = tiny_classifier(num_classes)
    trainer = cole.with_label_estimator(classifier, observed, seed=1)
    trainer.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=losses.LabelBankLoss(losses.get("role", expected_num_pos=1.0), LabelBank(observed)),
    )
    first_batch, second_batch = np.array([3, 9, 0, 12]), np.array([5, 14, 7, 1])
    never = np.setdiff1d(np.arange(num_examples), np.concatenate([first_batch, second_batch]))
    images = np.random.default_rng(3).uniform(0, 255, size=(8, 8, 8, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.concatenate([first_batch, second_batch])))
    dataset = dataset.map(lambda image, index: ((image, index), index)).batch(4)

    stored = trainer.get_layer("label_estimator").scaled_logits
    initial = stored.numpy().copy()
    np.testing.assert_allclose(10.0 * initial, cole.initial_estimator_logits(observed, seed=1), rtol=1e-6)
    classifier_before = [w.numpy().copy() for w in classifier.trainable_weights]
    after_step = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: after_step.append(stored.numpy()))

    history = trainer.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[record])
    assert np.isfinite(history.history["loss"][0])
    assert int(trainer.optimizer.iterations) == 2 and len(after_step) == 2

    for before, weight in zip(classifier_before, classifier.trainable_weights):
        assert np.any(weight.numpy() != before), weight.path
    # After step 1: the first batch's rows moved (every entry), all other rows are exactly initial.
    step_1 = after_step[0]
    assert np.all(step_1[first_batch] != initial[first_batch])
    rest = np.setdiff1d(np.arange(num_examples), first_batch)
    np.testing.assert_array_equal(step_1[rest], initial[rest])
    # After step 2: the second batch's rows moved too; rows never in a batch never moved.
    step_2 = after_step[1]
    np.testing.assert_array_equal(step_2, stored.numpy())
    assert np.all(step_2[second_batch] != initial[second_batch])
    np.testing.assert_array_equal(step_2[never], initial[never])
