"""VLPL and AEVLP (spml_tf/methods/vl.py), each against an independent, loop-based NumPy statement of
docs/method.md section 7.5: the two pseudo-positive rules, the two losses, AEVLP's regulariser, the presets,
and CLIP pseudo-positives given to any other loss as positives (base.LabelBankLoss)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from spml_tf import choices
from spml_tf import config as config_lib
from spml_tf import methods
from spml_tf.methods import vl
from spml_tf.training.label_bank import LabelBank


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def _row_softmax(row, temperature):
    """softmax of one row, written out."""
    top = max(row)
    exps = [math.exp((value - top) / temperature) for value in row]
    total = sum(exps)
    return [e / total for e in exps]


# --- The rules, restated with loops -------------------------------------------------------------------------------


def vlpl_reference(cosine, observed, temperature, threshold):
    n, c = observed.shape
    out = np.zeros((n, c), bool)
    for i in range(n):
        score = _row_softmax(list(cosine[i]), temperature)
        for j in range(c):
            out[i, j] = observed[i, j] == 0 and score[j] > threshold
    return out


def aevlp_reference(cosine, tile_max, tile_min, observed, temperature, eta, theta, top_k):
    n, c = observed.shape
    out = np.zeros((n, c), bool)
    for i in range(n):
        score = _row_softmax(list(cosine[i]), temperature)
        image_eta = eta
        for j in range(c):
            if observed[i, j] == 1:
                image_eta = min(image_eta, score[j])
        combined = []
        for j in range(c):
            local = float(tile_max[i, j]) if float(tile_max[i, j]) > image_eta else float(tile_min[i, j])
            combined.append((score[j] + local) / 2.0)
        for j in range(c):
            # The rank of j: the classes before it, by a higher score or an equal one at a lower index.
            rank = sum(1 for d in range(c) if combined[d] > combined[j] or (combined[d] == combined[j] and d < j))
            out[i, j] = rank < top_k and combined[j] >= theta and observed[i, j] == 0
    return out


def _observed(rng, n, c, extra_positive_rows=(), no_positive_rows=()):
    """One positive per row, a few -1; rows with two positives and rows with none."""
    observed = np.zeros((n, c), np.float32)
    observed[rng.rand(n, c) < 0.1] = -1.0
    observed[np.arange(n), rng.randint(c, size=n)] = 1.0
    for i in extra_positive_rows:
        observed[i, (np.argmax(observed[i] == 1) + 1 + rng.randint(c - 1)) % c] = 1.0
    for i in no_positive_rows:
        observed[i][observed[i] == 1] = 0.0
    return observed


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature, threshold", [(0.01, 0.3), (0.05, 0.1)])
def test_vlpl_rule_equals_the_loop_statement(seed, temperature, threshold):
    rng = np.random.RandomState(seed)
    observed = _observed(rng, 60, 9, extra_positive_rows=(3,), no_positive_rows=(5,))
    cosine = rng.uniform(0.1, 0.35, (60, 9)).astype(np.float32)
    ours = vl.vlpl_positives(cosine, observed, temperature, threshold)
    assert ours.dtype == bool and ours.shape == observed.shape
    np.testing.assert_array_equal(ours, vlpl_reference(cosine, observed, temperature, threshold))
    assert ours.any() and not ours[observed != 0].any()
    passing = vl.class_softmax(cosine, temperature) > threshold
    assert (passing & (observed == 1)).any()  # an observed positive passes, and is not returned


def test_vlpl_threshold_is_strict():
    observed = np.array([[1, 0, 0, 0]], np.float32)
    cosine = np.full((1, 4), 0.2, np.float32)  # every score exactly 1/4
    assert not vl.vlpl_positives(cosine, observed, 0.01, 0.25).any()
    np.testing.assert_array_equal(vl.vlpl_positives(cosine, observed, 0.01, np.nextafter(0.25, 0)),
                                  [[False, True, True, True]])


@pytest.mark.parametrize("seed, n, c", [(0, 50, 8), (1, 50, 8), (2, 30, 40), (3, 30, 40)])
@pytest.mark.parametrize("eta, theta, top_k", [(0.0, 0.2, 3), (0.3, 0.25, 3), (0.05, 0.125, 2), (1.0, 0.0, 50)])
def test_aevlp_rule_equals_the_loop_statement(seed, n, c, eta, theta, top_k):
    rng = np.random.RandomState(seed)
    observed = _observed(rng, n, c, extra_positive_rows=(0, 7), no_positive_rows=(1, 9))
    # Few distinct values, so that combined scores tie within a row and sit exactly on theta or eta.
    cosine = rng.choice([0.20, 0.22, 0.25], (n, c)).astype(np.float32)
    levels = np.array([0.0, 0.125, 0.25, 0.375, 0.5], np.float32)
    first, second = rng.choice(levels, (n, c)), rng.choice(levels, (n, c))
    tile_max, tile_min = np.maximum(first, second), np.minimum(first, second)
    ours = vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.05, eta, theta, top_k)
    assert ours.dtype == bool and ours.shape == (n, c)
    np.testing.assert_array_equal(ours, aevlp_reference(cosine, tile_max, tile_min, observed, 0.05, eta, theta,
                                                        top_k))
    assert not ours[observed != 0].any() and ours.sum(axis=1).max() <= top_k


def _uniform_case(tile_max, tile_min, observed):
    """Four classes of equal cosine: the global score of every class is exactly 1/4."""
    tile_max, tile_min = np.array([tile_max], np.float32), np.array([tile_min], np.float32)
    return np.full((1, 4), 0.3, np.float32), tile_max, tile_min, np.array([observed], np.float32)


def test_aevlp_ties_in_the_top_k_go_to_the_lower_class_index():
    # All combined scores equal: the top 2 are classes 0 and 1; class 0 is the observed positive, so only 1.
    cosine, tile_max, tile_min, observed = _uniform_case([0.5] * 4, [0.0] * 4, [1, 0, 0, 0])
    np.testing.assert_array_equal(vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.01, 0.1, 0.0, 2),
                                  [[False, True, False, False]])
    cosine, tile_max, tile_min, observed = _uniform_case([0.5] * 4, [0.0] * 4, [0, 0, 0, 1])
    np.testing.assert_array_equal(vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.01, 0.1, 0.0, 2),
                                  [[True, True, False, False]])
    # 40 classes (where NumPy's default sort is not stable), two above the rest: those, then 0, 1, 2.
    cosine, tile_max = np.zeros((1, 40), np.float32), np.full((1, 40), 0.5, np.float32)
    tile_max[0, [9, 31]] = 0.75
    observed = np.zeros((1, 40), np.float32)
    observed[0, 1] = 1
    ours = vl.aevlp_positives(cosine, tile_max, np.zeros_like(tile_max), observed, 0.01, 0.1, 0.0, 5)
    assert sorted(np.flatnonzero(ours[0])) == [0, 2, 9, 31]


def test_aevlp_theta_is_inclusive_and_eta_strict_and_capped():
    # s_g = 1/4 everywhere; tile_max 3/4 passes eta_i, so s_hat = (1/4 + 3/4) / 2 = 1/2 exactly.
    cosine, tile_max, tile_min, observed = _uniform_case([0.75] * 4, [0.0] * 4, [1, 0, 0, 0])
    assert vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.01, 0.3, 0.5, 4)[0, 1:].all()
    assert not vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.01, 0.3, np.nextafter(0.5, 1), 4).any()
    # tile_max exactly eta_i = min(s_g at the positive, eta) = 1/4: not above it, so the tile min (3/4) is used.
    cosine, tile_max, tile_min, observed = _uniform_case([0.25, 0.25, 0.75, 0.25], [0.75, 0.75, 0.0, 0.0],
                                                         [1, 0, 0, 0])
    np.testing.assert_array_equal(vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.01, 0.3, 0.5, 4),
                                  [[False, True, True, False]])
    # eta 0.2 caps eta_i below 1/4: now every tile max of 1/4 is above it and is used (s_hat 1/4).
    np.testing.assert_array_equal(vl.aevlp_positives(cosine, tile_max, tile_min, observed, 0.01, 0.2, 0.5, 4),
                                  [[False, False, True, False]])


def test_aevlp_threshold_of_an_image_with_several_positives_is_the_least():
    cosine = np.array([[0.30, 0.20, 0.0, 0.0]], np.float32)
    score = vl.class_softmax(cosine, 0.1)[0]
    middle = np.float32((score[0] + score[1]) / 2)  # between the two observed positives' global scores
    tile_max, tile_min = np.full((1, 4), middle, np.float32), np.zeros((1, 4), np.float32)
    theta = (score[2] + middle) / 2  # reached with the tile max only
    both = np.array([[1, 1, 0, 0]], np.float32)
    assert vl.aevlp_positives(cosine, tile_max, tile_min, both, 0.1, 1.0, theta, 4)[0, 2:].all()  # middle > min
    first = np.array([[1, 0, 0, 0]], np.float32)
    assert not vl.aevlp_positives(cosine, tile_max, tile_min, first, 0.1, 1.0, theta, 4)[0, 2:].any()  # < s_g[0]
    none = np.zeros((1, 4), np.float32)  # no observed positive: eta itself
    assert not vl.aevlp_positives(cosine, tile_max, tile_min, none, 0.1, 1.0, theta, 4)[0, 2:].any()
    assert vl.aevlp_positives(cosine, tile_max, tile_min, none, 0.1, 0.0, theta, 4)[0, 2:].all()


def test_rules_from_a_config_and_from_the_losses():
    rng = np.random.RandomState(4)
    observed = _observed(rng, 20, 80)
    cosine = rng.uniform(0.1, 0.35, (20, 80)).astype(np.float32)
    tile_max = rng.uniform(0.2, 0.9, (20, 80)).astype(np.float32)
    tile_min = (tile_max * rng.uniform(0, 1, (20, 80))).astype(np.float32)
    config = config_lib.from_overrides("coco", loss="aevlp")
    expected = aevlp_reference(cosine, tile_max, tile_min, observed, 0.01, 0.3, 0.5, 3)
    ours = vl.positives_for("aevlp", config, observed, cosine, tile_max, tile_min)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(methods.for_config(config).pseudo_positives(observed, cosine, tile_max, tile_min),
                                  expected)
    config = config_lib.from_overrides("coco", loss="an")
    expected = vlpl_reference(cosine, observed, 0.01, 0.3)
    np.testing.assert_array_equal(vl.positives_for("vlpl", config, observed, cosine), expected)
    np.testing.assert_array_equal(methods.get("vlpl").pseudo_positives(observed, cosine), expected)
    with pytest.raises(ValueError, match="tiles"):
        vl.positives_for("aevlp", config, observed, cosine)
    with pytest.raises(ValueError, match="shape"):
        vl.vlpl_positives(cosine[:, :5], observed)


# --- The losses, restated entry by entry --------------------------------------------------------------------------


def _log(x):
    return math.log(x)


def vlpl_reference_loss(labels, logits, positives, alpha, weight, rho):
    n, c = labels.shape
    total = 0.0
    for i in range(n):
        for j in range(c):
            y, z = labels[i, j], float(logits[i, j])
            p, q = _sigmoid(z), _sigmoid(-z)  # q = 1 - p without cancellation
            if y == 1:
                total += -_log(p)
            elif y == -1:
                total += -_log(q)
            elif y == 0 and positives[i, j] == 1:
                total += weight * (rho * -_log(p) + (1 - rho) * -_log(q))
            elif y == 0:
                total += -alpha * (-p * _log(p) - q * _log(q))
            # -s: 0
    return total / (n * c)


def epr_reference(logits, k):
    n, c = logits.shape
    mean = sum(_sigmoid(float(logits[i, j])) for i in range(n) for j in range(c)) / n
    return (mean - k) ** 2 / c**2


def aevlp_reference_loss(labels, logits, positives, schedule, q, lam, rho, reg, k):
    w, b, mu, sigma = schedule
    n, c = labels.shape
    total = 0.0
    for i in range(n):
        for j in range(c):
            y, z = labels[i, j], float(logits[i, j])
            p, one_minus_p = _sigmoid(z), _sigmoid(-z)
            v = math.exp(-0.5 * ((p - mu) / sigma) ** 2)
            if y == 1:
                total += -_log(p)
            elif y == -1:
                total += -_log(one_minus_p)
            elif y == 0 and positives[i, j] == 1:
                clipped = min(max(v, 1 - lam[0]), 1 - lam[1])
                total += (1 - clipped) * (rho * -_log(p) + (1 - rho) * -_log(one_minus_p))
            elif y == 0:
                kk = _sigmoid(w * p + b)
                total += v * (kk * (1 - p ** q[0]) / q[0] + (1 - kk) * (1 - one_minus_p ** q[1]) / q[1])
    return total / (n * c) + reg * epr_reference(logits, k)


def _batch(seed, n=12, c=7):
    """Labels 1 (one per row), -1, APL's -s and 0; pseudo-positives on a third of all entries (so also on some
    entries that are not unannotated, which only 0 entries may use); logits in [-4, 4]."""
    rng = np.random.RandomState(seed)
    labels = np.zeros((n, c), np.float32)
    labels[rng.rand(n, c) < 0.15] = -1.0
    soft = rng.rand(n, c) < 0.2
    labels[soft] = -rng.uniform(0, 0.9, soft.sum())
    labels[np.arange(n), rng.randint(c, size=n)] = 1.0
    positives = (rng.rand(n, c) < 0.35).astype(np.float32)
    logits = rng.uniform(-4, 4, (n, c)).astype(np.float32)
    assert (positives[labels == 0] == 1).any() and (positives[labels != 0] == 1).any()
    return labels, logits, positives


def _through_the_bank(loss, labels, logits, positives):
    bank = LabelBank(np.concatenate([np.zeros((3, labels.shape[1]), np.float32), labels]))
    all_positives = None if positives is None else np.concatenate([np.ones((3, labels.shape[1]), np.float32),
                                                                   positives])
    index = np.arange(3, 3 + labels.shape[0], dtype=np.float32)
    return float(methods.LabelBankLoss(loss, bank, all_positives)(index, logits))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dataset", ["voc", "cub"])
def test_vlpl_equals_the_entry_statement(seed, dataset):
    config = config_lib.from_overrides(dataset, loss="vlpl")
    loss = methods.for_config(config)
    labels, logits, positives = _batch(seed)
    expected = vlpl_reference_loss(labels, logits, positives, config.alpha, 0.7, 0.9)
    assert _through_the_bank(loss, labels, logits, positives) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    per_example = loss.call_with_positives(labels, logits, positives)
    assert per_example.shape == (12,)
    assert float(tf.reduce_mean(per_example)) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # Without pseudo-positives: EM.
    em = methods.get("em", alpha=config.alpha)
    assert _through_the_bank(loss, labels, logits, None) == pytest.approx(float(em(labels, logits)), rel=1e-6)
    assert float(loss(labels, logits)) == pytest.approx(float(em(labels, logits)), rel=1e-6)
    assert abs(expected - float(em(labels, logits))) > 1e-3  # the pseudo-positives count


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dataset, epoch", [("voc", 1), ("coco", 4), ("nuswide", 10), ("cub", 7)])
def test_aevlp_equals_the_entry_statement(seed, dataset, epoch):
    config = config_lib.from_overrides(dataset, loss="aevlp")
    loss = methods.for_config(config)
    loss.set_epoch(epoch, config.epochs)
    schedule = methods.gr_schedule(epoch, config.epochs, config.gr_w, config.gr_b, config.gr_mu, config.gr_sigma)
    labels, logits, positives = _batch(seed)
    expected = aevlp_reference_loss(labels, logits, positives, schedule, config.gr_q, config.aevlp_lambda, 0.9,
                                    config.aevlp_reg, config.expected_num_pos)
    assert _through_the_bank(loss, labels, logits, positives) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    without = aevlp_reference_loss(labels, logits, np.zeros_like(positives), schedule, config.gr_q,
                                   config.aevlp_lambda, 0.9, config.aevlp_reg, config.expected_num_pos)
    assert float(loss(labels, logits)) == pytest.approx(without, rel=1e-6, abs=1e-6)
    assert abs(expected - without) > 1e-3


def test_aevlp_regulariser_is_reg_times_epr_over_the_batch():
    rng = np.random.RandomState(3)
    labels = -rng.uniform(0, 0.9, (10, 6)).astype(np.float32)  # APL -s only: every entry term is 0
    logits = rng.normal(0, 2, (10, 6)).astype(np.float32)
    loss = methods.get("aevlp", aevlp_reg=0.3, expected_num_pos=2.0)
    expected = 0.3 * epr_reference(logits, 2.0)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-6)
    assert float(tf.reduce_mean(loss.call_with_positives(labels, logits, np.ones_like(labels)))) == pytest.approx(
        expected, rel=1e-6)
    # Its gradient: reg * 2 (M - k) / C^2 * p (1 - p) on every entry, M the batch mean of sum_c p.
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(labels, variable)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    mean = p.sum(axis=1).mean()
    expected_gradient = 0.3 * 2 * (mean - 2.0) / 36 * p * (1 - p) / 10
    np.testing.assert_allclose(tape.gradient(value, variable).numpy(), expected_gradient, rtol=1e-4, atol=1e-9)


def test_aevlp_takes_no_gradient_through_the_pseudo_positives_weight():
    # lambda (1, 0): no clipping, so a gradient through v would show; sigma 0.3: v varies with p.
    loss = methods.get("aevlp", aevlp_lambda=(1.0, 0.0), gr_sigma=(0.3, 0.3), aevlp_reg=0.0)
    loss.set_epoch(3, 8)
    w, b, mu, sigma = (float(x) for x in loss.schedule.numpy())
    z = np.array([[-1.5, 0.3, 2.0]], np.float32)
    variable = tf.Variable(z)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss.pseudo_positive_term(variable))
    z64 = z.astype(np.float64)
    p0 = 1 / (1 + np.exp(-z64))
    weight = 1 - np.exp(-0.5 * ((p0 - mu) / sigma) ** 2)

    def frozen(zz):
        return weight * (0.9 * np.log1p(np.exp(-zz)) + 0.1 * np.log1p(np.exp(zz)))

    numeric = (frozen(z64 + 1e-5) - frozen(z64 - 1e-5)) / 2e-5
    np.testing.assert_allclose(tape.gradient(value, variable).numpy(), numeric, rtol=1e-4, atol=1e-7)


# --- CLIP positives for any other loss ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, hyperparameters", [("an", {}), ("em", {"alpha": 0.2}), ("ll_r", {"ll_delta": 20.0}),
                                                   ("epr", {"expected_num_pos": 1.5}),
                                                   ("em_apl", {"alpha": 0.1, "beta": 0.5})])
def test_any_loss_takes_the_pseudo_positives_as_positives(name, hyperparameters):
    labels, logits, positives = _batch(5)
    loss = methods.get(name, **hyperparameters)
    if name == "ll_r":
        loss.set_epoch(2, 10)  # rejection from the second epoch
    assert not loss.takes_positives
    as_labels = np.where((positives > 0) & (labels > -1) & (labels < 1), 1.0, labels).astype(np.float32)
    assert (as_labels != labels).any()
    with_positives = _through_the_bank(loss, labels, logits, positives)
    assert with_positives == pytest.approx(_through_the_bank(loss, as_labels, logits, None), rel=1e-6)
    today = float(loss(labels, logits))
    assert _through_the_bank(loss, labels, logits, None) == pytest.approx(today, rel=1e-6)
    assert abs(with_positives - today) > 1e-3  # the pseudo-positives are not ignored


def test_positives_must_match_the_bank():
    with pytest.raises(ValueError, match="shape"):
        methods.LabelBankLoss(methods.get("an"), LabelBank(np.zeros((4, 3), np.float32)), np.zeros((4, 2)))


# --- Registry and presets -----------------------------------------------------------------------------------------


def test_both_are_registered_with_their_rules():
    assert methods.LOSSES["vlpl"] is vl.VisionLanguagePseudoLabels
    assert methods.LOSSES["aevlp"] is vl.GeneralizedPseudoLabelRobust
    assert {"vlpl", "aevlp"} <= set(choices.LOSSES) and choices.LOSSES == tuple(methods.LOSSES)
    assert [methods.LOSSES[key].positives_rule for key in ("vlpl", "aevlp", "gr")] == ["vlpl", "aevlp", None]
    assert methods.LOSSES["vlpl"].takes_positives and methods.LOSSES["aevlp"].takes_positives
    assert methods.HYPERPARAMETERS["alpha"] is methods.em.HYPERPARAMETERS[0]  # VLPL reuses EM's alpha


@pytest.mark.parametrize("loss, dataset, expected", [
    ("vlpl", "voc", dict(batch_size=8, epochs=10, learning_rate=1e-5, head_lr_mult=1.0, alpha=0.2,
                         vl_positive_weight=0.7, vl_soft_target=0.9, vlpl_temperature=0.01, vlpl_threshold=0.3,
                         max_map_drop=0.0, patience=10)),
    ("vlpl", "coco", dict(batch_size=8, learning_rate=1e-5, alpha=0.1)),
    ("vlpl", "nuswide", dict(batch_size=8, learning_rate=1e-5, alpha=0.1)),
    ("vlpl", "cub", dict(batch_size=8, learning_rate=1e-4, alpha=0.01)),
    ("aevlp", "voc", dict(batch_size=8, epochs=8, learning_rate=1e-5, head_lr_mult=10.0, max_map_drop=2.0,
                          patience=2, gr_w=(0.0, 2.0), gr_b=(-2.0, -2.0), gr_mu=(0.5, 0.8), gr_sigma=(2.0, 0.5),
                          gr_q=(0.01, 1.0), aevlp_lambda=(0.7, 0.4), aevlp_reg=0.05, expected_num_pos=1.5,
                          aevlp_temperature=0.01, aevlp_eta=0.0, aevlp_theta=0.5, aevlp_top_k=3)),
    ("aevlp", "coco", dict(batch_size=16, epochs=8, gr_w=(0.0, 10.0), gr_b=(-2.0, -8.0), gr_q=(0.01, 1.0),
                           aevlp_lambda=(0.7, 0.5), aevlp_reg=0.001, expected_num_pos=2.9, aevlp_eta=0.3,
                           aevlp_theta=0.5, aevlp_top_k=3)),
    ("aevlp", "nuswide", dict(batch_size=16, epochs=10, gr_w=(0.0, 10.0), gr_b=(-2.0, -8.0),
                              aevlp_lambda=(0.7, 0.5), aevlp_reg=0.001, expected_num_pos=1.9, aevlp_theta=0.6)),
    ("aevlp", "cub", dict(batch_size=8, epochs=10, gr_w=(0.0, 10.0), gr_b=(-2.0, -8.0), gr_q=(0.01, 1.5),
                          aevlp_lambda=(0.8, 0.2), aevlp_reg=0.01, expected_num_pos=31.4, aevlp_temperature=0.1,
                          aevlp_eta=0.005, aevlp_theta=0.005, aevlp_top_k=32)),
    ("gr", "coco", dict(gr_w=(0.0, 2.0), gr_b=(-2.0, -2.0), gr_q=(0.01, 1.0), batch_size=8, max_map_drop=2.0)),
])
def test_each_trains_with_its_authors_preset(loss, dataset, expected):
    config = config_lib.from_overrides(dataset, loss=loss)
    assert {key: getattr(config, key) for key in expected} == expected


def test_flags_win_over_the_preset_and_bad_values_are_one_line():
    assert config_lib.from_overrides("cub", loss="aevlp", gr_q=(0.01, 1.0)).gr_q == (0.01, 1.0)
    assert config_lib.from_overrides("digits", loss="vlpl").learning_rate == 1e-3  # digits keeps its own
    with pytest.raises(Exception, match="--aevlp_lambda=0.2,0.7 takes two numbers"):
        config_lib.from_overrides("voc", aevlp_lambda=(0.2, 0.7))
    with pytest.raises(Exception, match="--aevlp_top_k=0 must be at least 1"):
        config_lib.from_overrides("voc", aevlp_top_k=0)
