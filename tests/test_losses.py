"""Tests for spml_tf.losses against an independent NumPy statement of docs/method.md section 2.

The NumPy statement works in probability space, in float64, with exact logs
(no 1e-5 epsilon): it is the formula the log-sigmoid implementation computes.
Labels: 1 annotated positive, 0 unannotated, -s an APL pseudo-negative with
soft target s (0 <= s < 1), and -1 an annotated (observed) negative, which
every loss treats as a known negative.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from spml_tf import config as config_lib
from spml_tf import methods as losses
from spml_tf.core.errors import UsageError
from spml_tf.training.label_bank import LabelBank

ALPHA = 0.2
BETA = 0.02
LS_COEF = 0.1
EXPECTED_NUM_POS = 1.5

# name -> hyper-parameters passed to losses.get
CASES = {
    "full": {},
    "an": {},
    "an_ls": {"ls_coef": LS_COEF},
    "wan": {},
    "epr": {"expected_num_pos": EXPECTED_NUM_POS},
    "role": {"expected_num_pos": EXPECTED_NUM_POS},
    "em": {"alpha": ALPHA},
    "em_apl": {"alpha": ALPHA, "beta": BETA},
}
# The methods after the paper: their NumPy statements and tests are in test_methods.py.
METHOD_CASES = {"ll_r": {"ll_delta": 0.2}, "ll_ct": {"ll_delta": 0.2}, "ll_cp": {"ll_delta": 0.1}, "gr": {},
                "gr_apl": {"beta": BETA}, "vlpl": {"alpha": ALPHA}, "aevlp": {}}


# --- The independent NumPy statement -------------------------------------------------


def sigmoid(x):
    """Float64 logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def numpy_entry_terms(name, labels, logits, alpha=0.0, beta=0.0, ls_coef=0.0, expected_num_pos=0.0):
    """docs/method.md's per-entry loss matrix (B x C), one entry at a time; no regulariser.

    1 - p is computed as sigmoid(-x), which is the same number without the
    cancellation of 1 - sigmoid(x) at large logits (so +-100 stays exact).
    For "role", `logits` is B x 2C: classifier logits, then estimator logits.
    """
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    num_classes = labels.shape[1]
    terms = np.zeros(labels.shape)
    for i in range(labels.shape[0]):
        for c in range(num_classes):
            y = labels[i, c]
            p = sigmoid(logits[i, c])
            one_minus_p = sigmoid(-logits[i, c])
            if name == "role":
                # Classifier p and label estimator q of the same entry.
                q = sigmoid(logits[i, num_classes + c])
                one_minus_q = sigmoid(-logits[i, num_classes + c])
                if y == -1.0:
                    # Annotated negative: a known negative for both sides.
                    terms[i, c] = 0.5 * (-np.log(one_minus_p) - np.log(one_minus_q))
                else:
                    positive = -np.log(p) - np.log(q) if y == 1.0 else 0.0
                    cross_p = -q * np.log(p) - one_minus_q * np.log(one_minus_p)
                    cross_q = -p * np.log(q) - one_minus_p * np.log(one_minus_q)
                    terms[i, c] = 0.5 * positive + 0.5 * (cross_p + cross_q)
            elif name == "an_ls":
                # Assume negative with targets 1 - e and e; -1 is smoothed like 0.
                e = ls_coef
                if y == 1.0:
                    terms[i, c] = -(1.0 - e) * np.log(p) - e * np.log(one_minus_p)
                else:
                    terms[i, c] = -(1.0 - e) * np.log(one_minus_p) - e * np.log(p)
            elif y == -1.0:
                # Annotated negative: -log(1 - p) in every other loss, never a soft target 1.
                terms[i, c] = -np.log(one_minus_p)
            elif y == 1.0:
                # Annotated positive, the same in every other loss.
                terms[i, c] = -np.log(p)
            elif name in ("full", "an"):
                # Anything that is not a positive is a negative.
                terms[i, c] = -np.log(one_minus_p)
            elif name == "wan":
                # Unannotated: a negative down-weighted by 1 / (C - 1).
                terms[i, c] = -np.log(one_minus_p) / (num_classes - 1)
            elif name == "epr":
                # Unannotated: no entry term, only the regulariser.
                terms[i, c] = 0.0
            elif y == 0.0:
                # Unannotated: minus alpha times the binary entropy.
                entropy = -p * np.log(p) - one_minus_p * np.log(one_minus_p)
                terms[i, c] = -alpha * entropy
            elif name == "em":
                # Pseudo-negative -s: EM ignores it.
                terms[i, c] = 0.0
            else:
                # Pseudo-negative -s under em_apl: beta * BCE with soft target s.
                s = -y
                terms[i, c] = beta * (-s * np.log(p) - (1.0 - s) * np.log(one_minus_p))
    return terms


def numpy_epr_penalty(logits, expected_num_pos):
    """(mean over examples of sum over classes of p - k)^2 / C^2, with loops."""
    logits = np.asarray(logits, dtype=np.float64)
    num_examples, num_classes = logits.shape
    total = 0.0
    for i in range(num_examples):
        for c in range(num_classes):
            total += sigmoid(logits[i, c])
    mean_positives = total / num_examples
    return (mean_positives - expected_num_pos) ** 2 / num_classes**2


def numpy_regularizer(name, labels, logits, expected_num_pos=0.0, **unused):
    """The batch-level term added once to the scalar: EPR for epr, 0.5 (EPR(p) + EPR(q)) for role."""
    logits = np.asarray(logits, dtype=np.float64)
    num_classes = np.asarray(labels).shape[1]
    if name == "epr":
        return numpy_epr_penalty(logits, expected_num_pos)
    if name == "role":
        return 0.5 * (numpy_epr_penalty(logits[:, :num_classes], expected_num_pos)
                      + numpy_epr_penalty(logits[:, num_classes:], expected_num_pos))
    return 0.0


def numpy_loss(name, labels, logits, **hp):
    """The scalar the original optimises: sum of the entry matrix / (B * C), plus the regulariser."""
    terms = numpy_entry_terms(name, labels, logits, **hp)
    return terms.sum() / terms.size + numpy_regularizer(name, labels, logits, **hp)


def numpy_role_side_objective(labels, own_logits, other_logits, expected_num_pos):
    """What one side of ROLE descends, the other side's probabilities held fixed.

    0.5 pos(own) + 0.5 BCE(own; target sigmoid(other)) per entry, 0.5 (-log(1 - own))
    at annotated negatives, summed / (B * C), plus 0.5 EPR(own). Its gradient w.r.t.
    `own_logits` is ROLE's gradient with the stop_gradient targets; the ROLE value is
    side(p, q) + side(q, p).
    """
    labels = np.asarray(labels, dtype=np.float64)
    own_logits = np.asarray(own_logits, dtype=np.float64)
    other_logits = np.asarray(other_logits, dtype=np.float64)
    total = 0.0
    for i in range(labels.shape[0]):
        for c in range(labels.shape[1]):
            y = labels[i, c]
            own = sigmoid(own_logits[i, c])
            own_complement = sigmoid(-own_logits[i, c])
            target = sigmoid(other_logits[i, c])  # a constant here
            if y == -1.0:
                total += 0.5 * -np.log(own_complement)
                continue
            if y == 1.0:
                total += 0.5 * -np.log(own)
            total += 0.5 * (-target * np.log(own) - (1.0 - target) * np.log(own_complement))
    return total / labels.size + 0.5 * numpy_epr_penalty(own_logits, expected_num_pos)


def numpy_gradient(name, labels, logits, alpha=0.0, beta=0.0, ls_coef=0.0, expected_num_pos=0.0):
    """d(loss)/d(logits) by hand (for role: with ROLE's stop_gradient targets).

    With x the logit: d(-log p)/dx = p - 1, d(-log(1-p))/dx = p,
    dH/dx = -x p (1 - p), so d(-alpha H)/dx = alpha x p (1 - p),
    d(BCE(p; t))/dx = p - t for a constant target t. Entry terms are divided by
    B * C; d EPR/dx_ic = 2 (mean_j sum_c p_jc - k) / C^2 * p_ic (1 - p_ic) / B.
    """
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    num_examples, num_classes = labels.shape
    grad = np.zeros(logits.shape)
    for i in range(num_examples):
        for c in range(num_classes):
            y = labels[i, c]
            x = logits[i, c]
            p = sigmoid(x)
            one_minus_p = sigmoid(-x)
            if name == "role":
                q = sigmoid(logits[i, num_classes + c])
                if y == -1.0:
                    grad[i, c] = 0.5 * p
                    grad[i, num_classes + c] = 0.5 * q
                else:
                    positive = 1.0 if y == 1.0 else 0.0
                    grad[i, c] = 0.5 * positive * (p - 1.0) + 0.5 * (p - q)
                    grad[i, num_classes + c] = 0.5 * positive * (q - 1.0) + 0.5 * (q - p)
            elif name == "an_ls":
                grad[i, c] = p - (1.0 - ls_coef) if y == 1.0 else p - ls_coef
            elif y == -1.0:
                grad[i, c] = p
            elif y == 1.0:
                grad[i, c] = -one_minus_p
            elif name in ("full", "an"):
                grad[i, c] = p
            elif name == "wan":
                grad[i, c] = p / (num_classes - 1)
            elif name == "epr":
                grad[i, c] = 0.0
            elif y == 0.0:
                grad[i, c] = alpha * x * p * one_minus_p
            elif name == "em":
                grad[i, c] = 0.0
            else:
                grad[i, c] = beta * (p - (-y))
    grad /= labels.size

    # The regulariser: EPR on the classifier (epr), half EPR on each side (role).
    sides = {"epr": [(0, 1.0)], "role": [(0, 0.5), (num_classes, 0.5)]}.get(name, [])
    for start, weight in sides:
        block = logits[:, start:start + num_classes]
        mean_positives = sigmoid(block).sum() / num_examples
        factor = weight * 2.0 * (mean_positives - expected_num_pos) / num_classes**2 / num_examples
        for i in range(num_examples):
            for c in range(num_classes):
                x = block[i, c]
                grad[i, start + c] += factor * sigmoid(x) * sigmoid(-x)
    return grad


def central_difference(function, logits, h=1e-5):
    """Float64 central finite difference of a scalar function of a logit matrix."""
    logits = np.asarray(logits, dtype=np.float64)
    grad = np.zeros(logits.shape)
    for index in np.ndindex(logits.shape):
        up = logits.copy()
        down = logits.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (function(up) - function(down)) / (2 * h)
    return grad


def finite_difference_gradient(name, labels, logits, h=1e-5, **hp):
    """Float64 central finite difference of numpy_loss, one logit at a time.

    For role, of each side's objective with the other side held constant:
    that is what the stop_gradient targets make the gradient.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if name != "role":
        return central_difference(lambda z: numpy_loss(name, labels, z, **hp), logits, h)
    num_classes = np.asarray(labels).shape[1]
    p_logits, q_logits = logits[:, :num_classes], logits[:, num_classes:]
    k = hp["expected_num_pos"]
    grad_p = central_difference(lambda z: numpy_role_side_objective(labels, z, q_logits, k), p_logits, h)
    grad_q = central_difference(lambda z: numpy_role_side_objective(labels, z, p_logits, k), q_logits, h)
    return np.concatenate([grad_p, grad_q], axis=1)


# --- Test data -----------------------------------------------------------------------


def random_batch(name, seed, batch=6, classes=5):
    """Float32 (labels, logits): one positive per row, logits in [-9, 9].

    full: 0/1 labels. Others: also annotated negatives -1; em and em_apl also
    soft pseudo-negatives -s. role: logits are B x 2C (classifier | estimator).
    """
    rng = np.random.default_rng(seed)
    width = 2 * classes if name == "role" else classes
    logits = rng.uniform(-9.0, 9.0, size=(batch, width)).astype(np.float32)
    if name == "full":
        labels = (rng.random((batch, classes)) < 0.4).astype(np.float32)
        labels[np.arange(batch), rng.integers(0, classes, batch)] = 1.0
        return labels, logits
    labels = np.zeros((batch, classes), dtype=np.float32)
    positive = rng.integers(0, classes, batch)
    labels[np.arange(batch), positive] = 1.0
    # Annotated negatives -1, at least one.
    observed_negative = (rng.random((batch, classes)) < 0.25) & (labels == 0.0)
    observed_negative[0, (positive[0] + 1) % classes] = True
    labels[observed_negative] = -1.0
    if name in ("em", "em_apl"):
        # Soft pseudo-negatives -s, s in [0.01, 0.99); -0.0 would read as unannotated.
        pseudo = (rng.random((batch, classes)) < 0.35) & (labels == 0.0)
        pseudo[1, (positive[1] + 1) % classes] = True
        labels[pseudo] = -rng.uniform(0.01, 0.99, size=pseudo.sum()).astype(np.float32)
        assert ((labels < 0.0) & (labels > -1.0)).any()
    assert (labels == 0.0).any() and (labels == -1.0).any()
    return labels, logits


def tf_value_and_gradient(loss, labels, logits):
    """The Keras loss value and its gradient w.r.t. the logits."""
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(tf.constant(labels), logits)
    return float(value), tape.gradient(value, logits).numpy()


# --- Values --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_matches_numpy_statement(name, seed):
    """loss(y_true, logits) equals sum(entries) / (B * C) of the NumPy statement."""
    labels, logits = random_batch(name, seed)
    loss = losses.get(name, **CASES[name])
    value = float(loss(labels, logits))
    expected = numpy_loss(name, labels, logits, **CASES[name])
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_call_returns_one_value_per_example(name):
    """loss.call gives shape [B]: the mean over classes of that example's entries, plus the regulariser."""
    labels, logits = random_batch(name, seed=3, batch=7, classes=4)
    loss = losses.get(name, **CASES[name])
    per_example = loss.call(tf.constant(labels), tf.constant(logits))
    assert per_example.shape == (7,)
    expected = numpy_entry_terms(name, labels, logits, **CASES[name]).mean(axis=1)
    expected += numpy_regularizer(name, labels, logits, **CASES[name])  # batch-level, on every example
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_em_value_can_be_negative():
    """EM on unannotated labels only is -alpha * mean H(p) < 0 (docs/method.md: negative values are expected)."""
    labels = np.zeros((2, 3), dtype=np.float32)
    logits = np.array([[0.0, 1.0, -2.0], [0.5, -0.5, 3.0]], dtype=np.float32)
    value = float(losses.get("em", alpha=ALPHA)(labels, logits))
    assert value < 0.0
    np.testing.assert_allclose(value, numpy_loss("em", labels, logits, alpha=ALPHA), rtol=1e-5)


# --- Gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_finite_difference(name):
    """tf.GradientTape gradient equals a float64 central finite difference of the NumPy statement."""
    labels, logits = random_batch(name, seed=4)
    _, grad = tf_value_and_gradient(losses.get(name, **CASES[name]), labels, logits)
    expected = finite_difference_gradient(name, labels, logits, **CASES[name])
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_analytic_gradient(name):
    """tf.GradientTape gradient equals the hand-derived gradient."""
    labels, logits = random_batch(name, seed=5)
    _, grad = tf_value_and_gradient(losses.get(name, **CASES[name]), labels, logits)
    expected = numpy_gradient(name, labels, logits, **CASES[name])
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-8)


def test_em_gradient_on_unannotated_is_alpha_x_p_one_minus_p():
    """EM's gradient on an unannotated entry is alpha * x * p (1 - p) / (B C): zero at x=0, small at large |x|."""
    logits = np.array([[-8.0, -1.0, 0.0, 1.0, 8.0]], dtype=np.float32)
    labels = np.zeros_like(logits)
    _, grad = tf_value_and_gradient(losses.get("em", alpha=ALPHA), labels, logits)
    x = logits.astype(np.float64)
    expected = ALPHA * x * sigmoid(x) * (1.0 - sigmoid(x)) / labels.size
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-10)
    assert grad[0, 2] == 0.0
    assert abs(grad[0, 0]) < abs(grad[0, 1]) and abs(grad[0, 4]) < abs(grad[0, 3])


def test_em_ignores_pseudo_negatives():
    """EM gives 0 value and exactly 0 gradient at pseudo-negatives -s."""
    labels = -np.array([[0.01, 0.3, 0.5], [0.9, 0.05, 0.7]], dtype=np.float32)
    logits = np.array([[-9.0, 0.0, 2.0], [9.0, -3.0, 0.5]], dtype=np.float32)
    value, grad = tf_value_and_gradient(losses.get("em", alpha=ALPHA), labels, logits)
    assert value == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))

    # Mixed with other labels: the -s entries still have exactly 0 gradient; -1 is not a -s.
    labels, logits = random_batch("em", seed=6)
    _, grad = tf_value_and_gradient(losses.get("em", alpha=ALPHA), labels, logits)
    pseudo = (labels < 0.0) & (labels > -1.0)
    assert np.all(grad[pseudo] == 0.0)
    assert np.all(grad[~pseudo] != 0.0)


def test_em_apl_pseudo_negative_gradient_is_beta_p_minus_s():
    """em_apl pulls a pseudo-negative -s towards p = s: gradient beta * (p - s) / (B C), zero at p = s."""
    s = np.array([0.1, 0.25, 0.6], dtype=np.float32)
    labels = -s[None, :]
    logits = np.log(s / (1.0 - s)).astype(np.float32)[None, :]  # p == s
    logits[0, 2] += 2.0  # p > s there: positive gradient
    _, grad = tf_value_and_gradient(losses.get("em_apl", alpha=ALPHA, beta=BETA), labels, logits)
    p = sigmoid(logits)
    np.testing.assert_allclose(grad, BETA * (p - s) / labels.size, rtol=1e-4, atol=1e-9)
    assert abs(grad[0, 0]) < 1e-8 and grad[0, 2] > 0.0


@pytest.mark.parametrize("name", list(CASES))
def test_extreme_logits_give_finite_values_and_gradients(name):
    """At logits +-100 every label kind gives a finite value and gradient, equal to the exact formula."""
    if name == "full":
        labels = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=np.float32)
    elif name in ("em", "em_apl"):
        labels = np.array([[1, 1, 0, 0, -0.3, -0.3, -1, -1], [0, -0.7, 1, 0, -0.7, 1, -1, -1]], dtype=np.float32)
    else:
        labels = np.array([[1, 1, 0, 0, -1, -1], [0, -1, 1, 0, -1, 1]], dtype=np.float32)
    width = 2 * labels.shape[1] if name == "role" else labels.shape[1]
    # +-100 in a checkerboard: both signs at every label kind (and on both sides of role).
    sign = np.where(np.indices((2, width)).sum(axis=0) % 2 == 0, 1.0, -1.0)
    logits = (100.0 * sign).astype(np.float32)
    if name == "role":
        logits[:, labels.shape[1]:] *= np.array([[1.0], [-1.0]], dtype=np.float32)  # p and q disagree in row 1
    value, grad = tf_value_and_gradient(losses.get(name, **CASES[name]), labels, logits)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, numpy_loss(name, labels, logits, **CASES[name]), rtol=1e-5)
    np.testing.assert_allclose(grad, numpy_gradient(name, labels, logits, **CASES[name]), rtol=1e-5, atol=1e-8)


def test_extreme_logit_wrong_side_costs_its_magnitude():
    """A positive at logit -100 and a negative at +100 each cost ~100 (not inf, not the 1e-5-capped 11.5)."""
    labels = np.array([[1.0, 0.0]], dtype=np.float32)
    logits = np.array([[-100.0, 100.0]], dtype=np.float32)
    np.testing.assert_allclose(float(losses.get("an")(labels, logits)), 100.0, rtol=1e-6)


# --- Annotated negatives (-1) --------------------------------------------------------


@pytest.mark.parametrize("name", [name for name in CASES if name != "full"])
def test_annotated_negatives_are_known_negatives(name):
    """All -1 labels: -log(1-p) per entry (an_ls smoothed, role half on each side), plus any regulariser."""
    logits = np.array([[-3.0, 0.0, 2.5, 8.0], [1.0, -7.0, 0.5, -0.5]], dtype=np.float32)
    if name == "role":
        logits = np.concatenate([logits, 0.5 * logits[:, ::-1]], axis=1)
    labels = -np.ones((2, 4), dtype=np.float32)
    x = logits.astype(np.float64)
    if name == "an_ls":
        entries = -(1.0 - LS_COEF) * np.log(sigmoid(-x)) - LS_COEF * np.log(sigmoid(x))
    elif name == "role":
        entries = 0.5 * (-np.log(sigmoid(-x[:, :4])) - np.log(sigmoid(-x[:, 4:])))
    else:
        entries = -np.log(sigmoid(-x))
    expected = entries.mean() + numpy_regularizer(name, labels, logits, **CASES[name])
    value, grad = tf_value_and_gradient(losses.get(name, **CASES[name]), labels, logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, numpy_gradient(name, labels, logits, **CASES[name]), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["em", "em_apl"])
def test_em_losses_do_not_read_minus_one_as_a_soft_target(name):
    """-1 costs -log(1-p) at full weight (gradient p / (B C)); -0.999 is still a pseudo-negative -s."""
    logits = np.array([[-2.0, 0.0, 3.0]], dtype=np.float32)
    p = sigmoid(logits)
    loss = losses.get(name, **CASES[name])
    minus_one = -np.ones_like(logits)
    value, grad = tf_value_and_gradient(loss, minus_one, logits)
    np.testing.assert_allclose(value, np.mean(-np.log(1.0 - p)), rtol=1e-5)
    np.testing.assert_allclose(grad, p / logits.size, rtol=1e-5)  # pushed towards p = 0, never towards 1

    almost = np.full_like(logits, -0.999)
    s = np.float64(np.float32(0.999))
    soft = BETA * (-s * np.log(p) - (1.0 - s) * np.log(1.0 - p)) if name == "em_apl" else 0.0 * p
    np.testing.assert_allclose(float(loss(almost, logits)), np.mean(soft), rtol=1e-5, atol=1e-12)


# --- wan, epr and role ---------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_wan_divides_unannotated_terms_by_num_classes_minus_one(classes):
    """wan is AN with each unannotated (0) term divided by C - 1; positives and -1 keep full weight."""
    rng = np.random.default_rng(classes)
    logits = rng.uniform(-4.0, 4.0, size=(3, classes)).astype(np.float32)
    labels = np.zeros((3, classes), dtype=np.float32)
    labels[:, 0] = 1.0
    labels[2, 1] = -1.0
    x = logits.astype(np.float64)
    an_terms = np.where(labels == 1.0, -np.log(sigmoid(x)), -np.log(sigmoid(-x)))
    weights = np.where(labels == 0.0, 1.0 / (classes - 1), 1.0)
    wan = losses.get("wan")
    np.testing.assert_allclose(float(wan(labels, logits)), (an_terms * weights).sum() / labels.size, rtol=1e-5)

    unannotated = np.zeros_like(labels)
    np.testing.assert_allclose(
        float(wan(unannotated, logits)), float(losses.get("an")(unannotated, logits)) / (classes - 1), rtol=1e-5
    )


def test_epr_regularizer_uses_the_batch_mean_of_per_example_sums():
    """No positives: epr = (mean_i sum_c p_ic - k)^2 / C^2, carried by every example, batch-level."""
    logits = np.array([[30.0] * 4, [-30.0] * 4], dtype=np.float32)  # sum_c p: 4 and 0, batch mean 2
    labels = np.zeros_like(logits)
    loss = losses.get("epr", expected_num_pos=1.5)
    expected = (2.0 - 1.5) ** 2 / 4**2
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-6)
    np.testing.assert_allclose(loss.call(tf.constant(labels), tf.constant(logits)).numpy(), [expected] * 2, rtol=1e-6)
    # Not the mean of per-example penalties ((4 - k)^2 + (0 - k)^2) / 2 / C^2 = 0.2656...
    assert abs(float(loss(labels, logits)) - ((4 - 1.5) ** 2 + 1.5**2) / 2 / 16) > 0.1
    # A one-example batch has its own penalty; with k equal to the batch mean there is none.
    np.testing.assert_allclose(float(loss(labels[:1], logits[:1])), (4.0 - 1.5) ** 2 / 16, rtol=1e-6)
    assert abs(float(losses.get("epr", expected_num_pos=2.0)(labels, logits))) < 1e-10

    # Random logits: value minus the positive terms is the penalty of the batch mean of row sums.
    labels, logits = random_batch("epr", seed=12)
    p = sigmoid(logits)
    positives = np.where(labels == 1.0, -np.log(p), np.where(labels == -1.0, -np.log(1.0 - p), 0.0)).mean()
    penalty = (p.sum(axis=1).mean() - EXPECTED_NUM_POS) ** 2 / labels.shape[1] ** 2
    value = float(losses.get("epr", expected_num_pos=EXPECTED_NUM_POS)(labels, logits))
    np.testing.assert_allclose(value, positives + penalty, rtol=1e-5)


def test_role_value_matches_spec_formula():
    """ROLE = mean(0.5 (pos(p) + pos(q)) + 0.5 (BCE(p; q) + BCE(q; p))) + 0.5 (EPR(p) + EPR(q)) (docs/method.md)."""
    rng = np.random.default_rng(13)
    labels = np.zeros((5, 4), dtype=np.float32)
    labels[np.arange(5), rng.integers(0, 4, 5)] = 1.0
    logits = rng.uniform(-9.0, 9.0, size=(5, 8)).astype(np.float32)
    p, q = sigmoid(logits[:, :4]), sigmoid(logits[:, 4:])
    observed = labels == 1.0
    pos_p, pos_q = np.where(observed, -np.log(p), 0.0), np.where(observed, -np.log(q), 0.0)
    bce_p = -q * np.log(p) - (1.0 - q) * np.log(1.0 - p)
    bce_q = -p * np.log(q) - (1.0 - p) * np.log(1.0 - q)
    epr_p = (p.sum(axis=1).mean() - 2.0) ** 2 / 16
    epr_q = (q.sum(axis=1).mean() - 2.0) ** 2 / 16
    expected = (0.5 * (pos_p + pos_q) + 0.5 * (bce_p + bce_q)).mean() + 0.5 * (epr_p + epr_q)
    value = float(losses.get("role", expected_num_pos=2.0)(labels, logits))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(numpy_loss("role", labels, logits, expected_num_pos=2.0), expected, rtol=1e-12)
    # The statement's split into two sides adds up to the same value, also with -1 labels.
    labels, logits = random_batch("role", seed=14)
    sides = (numpy_role_side_objective(labels, logits[:, :5], logits[:, 5:], EXPECTED_NUM_POS)
             + numpy_role_side_objective(labels, logits[:, 5:], logits[:, :5], EXPECTED_NUM_POS))
    np.testing.assert_allclose(sides, numpy_loss("role", labels, logits, **CASES["role"]), rtol=1e-12)


def test_role_gradients_hold_the_other_side_constant():
    """d/dp is that of 0.5 pos(p) + 0.5 BCE(p; q fixed) + 0.5 EPR(p) alone, and symmetrically for q."""
    labels, logits = random_batch("role", seed=10)
    classes = labels.shape[1]
    _, grad = tf_value_and_gradient(losses.get("role", **CASES["role"]), labels, logits)
    p_logits = logits[:, :classes].astype(np.float64)
    q_logits = logits[:, classes:].astype(np.float64)
    classifier = central_difference(
        lambda z: numpy_role_side_objective(labels, z, q_logits, EXPECTED_NUM_POS), p_logits)
    estimator = central_difference(
        lambda z: numpy_role_side_objective(labels, z, p_logits, EXPECTED_NUM_POS), q_logits)
    np.testing.assert_allclose(grad[:, :classes], classifier, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(grad[:, classes:], estimator, rtol=1e-4, atol=1e-8)
    # The check can tell: the derivative of the value through both sides is far from it.
    through_both = central_difference(lambda z: numpy_loss("role", labels, z, **CASES["role"]), logits)
    assert np.abs(through_both - grad).max() > 0.3 * np.abs(grad).max()


# --- Factory -------------------------------------------------------------------------


def test_get_em_apl_with_voc_hyperparameters():
    """get("em_apl", alpha=0.2, beta=0.02) is an EM+APL loss carrying exactly those values."""
    loss = losses.get("em_apl", alpha=0.2, beta=0.02)
    assert isinstance(loss, losses.EntropyMaximizationAPL)
    assert loss.name == "em_apl"
    assert loss.alpha == 0.2 and loss.beta == 0.02
    config = loss.get_config()
    assert config["alpha"] == 0.2 and config["beta"] == 0.02
    labels, logits = random_batch("em_apl", seed=7)
    np.testing.assert_allclose(
        float(loss(labels, logits)), numpy_loss("em_apl", labels, logits, alpha=0.2, beta=0.02), rtol=1e-5
    )


@pytest.mark.parametrize(
    "name, cls",
    [
        ("full", losses.FullLabels),
        ("an", losses.AssumeNegative),
        ("an_ls", losses.LabelSmoothing),
        ("wan", losses.WeakAssumeNegative),
        ("epr", losses.ExpectedPositiveRegularization),
        ("role", losses.RegularizedOnlineLabelEstimation),
        ("em", losses.EntropyMaximization),
        ("em_apl", losses.EntropyMaximizationAPL),
    ],
)
def test_get_returns_named_class(name, cls):
    """Each registered name gives its class, named after the name."""
    loss = losses.get(name, **CASES[name])
    assert type(loss) is cls
    assert loss.name == name


def test_get_config_round_trip():
    """from_config(get_config()) rebuilds an em_apl loss with the same hyper-parameters."""
    loss = losses.get("em_apl", alpha=0.1, beta=0.9)
    rebuilt = losses.EntropyMaximizationAPL.from_config(loss.get_config())
    assert (rebuilt.alpha, rebuilt.beta, rebuilt.name) == (0.1, 0.9, "em_apl")


def test_get_an_ls_defaults_to_spec_smoothing():
    """get("an_ls") smooths with e = 0.1 (docs/method.md's table)."""
    assert losses.get("an_ls").ls_coef == 0.1


@pytest.mark.parametrize(
    "name, hyperparameters",
    [("an_ls", {"ls_coef": 0.25}), ("epr", {"expected_num_pos": 2.9}), ("role", {"expected_num_pos": 31.4})],
)
def test_get_passes_and_round_trips_hyperparameters(name, hyperparameters):
    """get(name, **hp) carries hp, uses it in the value, and survives get_config / from_config."""
    loss = losses.get(name, **hyperparameters)
    (key, wanted), = hyperparameters.items()
    assert getattr(loss, key) == wanted and loss.get_config()[key] == wanted
    rebuilt = type(loss).from_config(loss.get_config())
    assert getattr(rebuilt, key) == wanted and rebuilt.name == name
    labels, logits = random_batch(name, seed=15)
    expected = numpy_loss(name, labels, logits, **hyperparameters)
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(rebuilt(labels, logits)), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "name, overrides",
    [("an_ls", {"ls_coef": 0.25}), ("epr", {"expected_num_pos": 2.5}), ("role", {"expected_num_pos": 2.5})],
)
def test_from_config_passes_hyperparameters_of_the_config(name, overrides):
    """losses.from_config reads ls_coef / expected_num_pos from the Config (not the defaults or the preset)."""
    config = config_lib.from_overrides("digits", loss=name, **overrides)
    loss = losses.for_config(config)
    assert type(loss) is type(losses.get(name, **overrides)) and loss.name == name
    (key, wanted), = overrides.items()
    assert getattr(loss, key) == wanted
    labels, logits = random_batch(name, seed=16)
    np.testing.assert_allclose(float(loss(labels, logits)), numpy_loss(name, labels, logits, **overrides), rtol=1e-5)


def test_from_config_uses_the_preset_expected_num_pos():
    """Without an override, k is the preset's: VOC 1.5, COCO 2.9 (docs/method.md section 2)."""
    assert losses.for_config(config_lib.from_overrides("voc", loss="epr")).expected_num_pos == 1.5
    assert losses.for_config(config_lib.from_overrides("coco", loss="role")).expected_num_pos == 2.9


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_from_config_builds_every_configurable_loss(name):
    """Every --loss value of the Config gives the registered class under that name."""
    loss = losses.for_config(config_lib.from_overrides("digits", loss=name))
    assert type(loss) is type(losses.get(name, **{**CASES, **METHOD_CASES}[name])) and loss.name == name


@pytest.mark.parametrize("name", ["EM", "bce", "role_", ""])
def test_get_unknown_name_raises_value_error(name):
    """An unregistered name raises ValueError naming it."""
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get(name)


# --- LabelBankLoss -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["an", "an_ls", "wan", "epr", "role", "em", "em_apl"])
@pytest.mark.parametrize("index_shape", ["flat", "column"])
def test_label_bank_loss_gathers_labels_by_index(name, index_shape):
    """LabelBankLoss with float example indices as y_true equals the inner loss on the gathered rows."""
    bank_labels, _ = random_batch(name, seed=8, batch=10, classes=5)
    _, logits = random_batch(name, seed=9, batch=4, classes=5)
    index = np.array([7, 0, 7, 3], dtype=np.float32)  # unsorted, with a repeat
    if index_shape == "column":
        index = index[:, None]  # Keras often hands y_true as [B, 1]
    inner = losses.get(name, **CASES[name])
    wrapped = losses.LabelBankLoss(inner, LabelBank(bank_labels))

    gathered = bank_labels[[7, 0, 7, 3]]
    value = float(wrapped(index, logits))
    np.testing.assert_allclose(value, float(inner(gathered, logits)), rtol=1e-6)
    np.testing.assert_allclose(value, numpy_loss(name, gathered, logits, **CASES[name]), rtol=1e-5)
    assert wrapped.call(tf.constant(index), tf.constant(logits)).shape == ()  # the step's global mean


def test_label_bank_loss_sees_bank_updates():
    """After bank.assign, the same LabelBankLoss reads the new labels."""
    labels = np.zeros((3, 2), dtype=np.float32)
    labels[:, 0] = 1.0
    bank = LabelBank(labels)
    wrapped = losses.LabelBankLoss(losses.get("em_apl", alpha=ALPHA, beta=BETA), bank)
    index = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    logits = np.array([[2.0, -1.0], [1.0, 0.5], [0.0, -3.0]], dtype=np.float32)
    before = float(wrapped(index, logits))
    updated = labels.copy()
    updated[:, 1] = -0.2
    bank.assign(updated)
    after = float(wrapped(index, logits))
    np.testing.assert_allclose(before, numpy_loss("em_apl", labels, logits, alpha=ALPHA, beta=BETA), rtol=1e-5)
    np.testing.assert_allclose(after, numpy_loss("em_apl", updated, logits, alpha=ALPHA, beta=BETA), rtol=1e-5)
    assert before != after


@pytest.mark.parametrize("overrides, message", [
    ({"loss": "bce"}, "--loss='bce' is not one of full, an, an_ls, wan, epr, role, em, em_apl"),
    ({"epochs": 4, "warmup_epochs": 4}, "--warmup_epochs=4 must be smaller than --epochs=4 with --loss=em_apl"),
])
def test_a_config_the_loss_cannot_train_is_refused(overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        losses.for_config(config_lib.from_overrides("digits", **overrides))


def test_every_loss_declares_what_training_needs():
    """The trainer asks the loss: full labels (the oracle), the example index (ROLE), callbacks (APL)."""
    context = losses.TrainingContext(config_lib.from_overrides("digits"), bank=None, predictor=None,
                                     train_eval_dataset=None, full_train_labels=None)
    for name, loss_class in losses.LOSSES.items():
        loss = losses.for_config(config_lib.from_overrides("digits", loss=name))
        assert loss_class.key == name and isinstance(loss, loss_class)
        assert loss_class.uses_full_labels == (name == "full")
        assert loss.needs_example_index() == (name == "role")
        kinds = ([type(callback).__name__ for callback in loss.callbacks(context)]
                 if name not in ("em_apl", "gr_apl") else None)  # APL needs a real bank and data
        if name in ("ll_r", "ll_ct", "gr", "aevlp"):
            assert kinds == ["EpochSchedule"]
        elif name == "ll_cp":
            assert kinds == ["EpochSchedule", "PermanentCorrections"]
        elif name not in ("em_apl", "gr_apl"):
            assert kinds == []


def test_global_mean_on_one_device_is_the_batch_mean_and_zero_for_no_example():
    """The loss of a step (losses.global_mean): sum / global batch size, which on one device is the mean; a
    replica given no example of a partial last batch contributes 0, not nan (tests/test_distribute.py checks
    the replicas' sum against one device)."""
    values = np.array([0.5, -1.25, 3.0], np.float32)
    np.testing.assert_allclose(float(losses.global_mean(tf.constant(values))), values.mean(), rtol=1e-7)
    assert float(losses.global_mean(tf.zeros([0]))) == 0.0
