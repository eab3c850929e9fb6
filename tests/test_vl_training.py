"""CLIP's pseudo-positives in training (spml_tf/training/vl_positives.py): which rule a run uses, where its
scores are, every registered loss training with them, the simulated scorer of bench/vl_quality.py, and AEVLP's
two stopping rules."""

import dataclasses
import os
import sys

import numpy as np
import pytest

from spml_tf import config as config_lib, methods
from spml_tf.core.errors import UsageError
from spml_tf.data import datasets
from spml_tf.training import evaluation, vl_positives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    return config_lib.from_overrides("digits", **overrides)


def test_the_rule_of_a_run():
    assert vl_positives.rule_of(_config(), methods.LOSSES["em_apl"]) == "none"  # auto: em_apl has no rule
    assert vl_positives.rule_of(_config(loss="vlpl"), methods.LOSSES["vlpl"]) == "vlpl"
    assert vl_positives.rule_of(_config(loss="aevlp"), methods.LOSSES["aevlp"]) == "aevlp"
    assert vl_positives.rule_of(_config(vl_positives="aevlp"), methods.LOSSES["gr"]) == "aevlp"
    assert vl_positives.rule_of(_config(loss="vlpl", vl_positives="aevlp"), methods.LOSSES["vlpl"]) == "aevlp"
    with pytest.raises(UsageError, match="--loss=vlpl trains on CLIP's pseudo-positives"):
        vl_positives.rule_of(_config(loss="vlpl", vl_positives="none"), methods.LOSSES["vlpl"])
    with pytest.raises(UsageError, match="did you mean 'aevlp'"):
        _config(vl_positives="aevpl")


def test_the_scores_directory_is_found_or_named(tmp_path):
    config = _config(data_dir=str(tmp_path), vl_positives="vlpl")
    with pytest.raises(UsageError, match=r"has no CLIP scores: run spml-vl-scores --dataset=digits --preset="):
        vl_positives.scores_dir(config)
    for name in ("clip_a", "clip_b"):
        (tmp_path / "vl_scores" / name).mkdir(parents=True)
        (tmp_path / "vl_scores" / name / "scores.json").write_text("{}")
    with pytest.raises(UsageError, match=r"scores of several presets \(clip_a, clip_b\).*--vl_scores="):
        vl_positives.scores_dir(config)
    os.remove(tmp_path / "vl_scores" / "clip_b" / "scores.json")
    assert vl_positives.scores_dir(config) == str(tmp_path / "vl_scores" / "clip_a")
    assert vl_positives.scores_dir(dataclasses.replace(config, vl_scores="/else")) == "/else"


def test_the_simulated_scorer_has_the_precision_and_recall_asked():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import vl_quality

    rng = np.random.default_rng(0)
    full = (rng.random((400, 10)) < 0.3).astype(np.float32)
    full[np.arange(400), rng.integers(0, 10, 400)] = 1
    observed = np.zeros_like(full)
    observed[np.arange(400), full.argmax(axis=1)] = 1
    for precision, recall in [(1.0, 0.5), (0.5, 0.5), (0.25, 0.8)]:
        chosen = vl_quality.simulate(full, observed, precision, recall, seed=1) > 0
        unknown_true = (full == 1) & (observed != 1)
        assert not (chosen & (observed == 1)).any()
        assert abs((chosen & unknown_true).sum() / unknown_true.sum() - recall) < 0.01
        assert abs((full[chosen] == 1).mean() - precision) < 0.01


@pytest.mark.parametrize("loss_name", list(methods.LOSSES))
def test_every_registered_loss_trains_with_pseudo_positives(loss_name, tiny_digits_dir, tmp_path):
    """Two steps of each loss with given pseudo-positives: a finite loss, and (but for the oracle, which trains
    on the full labels) a different one than without them."""
    import keras

    from spml_tf.training import distribute, trainer

    config = config_lib.from_overrides("digits", data_dir=tiny_digits_dir, model_dir=str(tmp_path), loss=loss_name,
                                       epochs=2, warmup_epochs=1, image_size=16, batch_size=32, seed=0)
    splits = datasets.load("digits", tiny_digits_dir)
    labels = splits.labels("train")
    placement = distribute.make_strategy("one_device", config.batch_size)
    positives = ((labels.full == 1) & (labels.observed != 1)).astype(np.float32)
    values = []
    for given in (None, positives):
        keras.utils.set_random_seed(0)
        loss = methods.for_config(config)
        data = trainer.make_datasets(config, splits, loss, 0, placement)
        built = trainer.build_trainer(config, splits, labels, loss, placement, lambda line: None, given)
        history = built.training_model.fit(data.train, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        values.append(history.history["loss"][-1])
    assert np.all(np.isfinite(values))
    if loss_name != "full":
        assert values[0] != values[1]


def test_aevlps_two_stopping_rules_whichever_comes_first():
    class Model:
        stop_training = False

        def get_weights(self):
            return []

        def set_weights(self, weights):
            pass

    def stopped_after(maps, patience, drop):
        stopping = evaluation.ResumableEarlyStopping(patience, drop)
        stopping.set_model(Model())
        stopping.on_train_begin()
        for epoch, value in enumerate(maps):
            stopping.on_epoch_end(epoch, {"val_map": value})
            if stopping.model.stop_training:
                return epoch + 1
        return None

    slow_decline = [50.0, 52.0, 51.5, 51.0, 50.8, 50.6]  # never 2 below the best: the patience of 2 stops it
    assert stopped_after(slow_decline, patience=2, drop=2.0) == 4
    assert stopped_after(slow_decline, patience=10, drop=2.0) is None
    sharp_fall = [50.0, 52.0, 49.5]  # 2.5 below the best at once: the drop rule stops it
    assert stopped_after(sharp_fall, patience=2, drop=2.0) == 3
    assert stopped_after(sharp_fall, patience=2, drop=0.0) is None


# --- End to end: spml-vl-scores, then spml-train, on the synthetic VOC release with a tiny local preset ----------


def _command(module, *args, cwd):
    import subprocess

    return subprocess.run([sys.executable, *(["-m", module] if module else [os.path.join(ROOT, "train_main.py")]),
                           *args], capture_output=True, text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def voc_with_scores(tmp_path_factory):
    """The synthetic VOC release converted, and a tiny random CLIP's scores beside it (the default place)."""
    pytest.importorskip("keras_hub")
    import clip_fixtures
    import raw_fixtures

    from spml_tf.data import convert

    root = tmp_path_factory.mktemp("vl_voc")
    raw_fixtures.make_voc(str(root / "raw"))
    convert.convert(convert.ConvertConfig(dataset="voc", raw_dir=str(root / "raw"), out_dir=str(root / "data")),
                    log=lambda line: None)
    preset = clip_fixtures.save_tiny_clip(str(root / "tiny_clip"))
    result = _command("spml_tf.vl_scores", "--dataset=voc", f"--data_dir={root / 'data'}", f"--preset={preset}",
                      cwd=str(root))
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(root / "data" / "vl_scores" / "tiny_clip" / "scores.json")
    return root


SMALL = ["--backbone=small_cnn", "--weights=none", "--image_size=32", "--epochs=2", "--batch_size=8"]


@pytest.mark.slow
@pytest.mark.parametrize("args, rule", [(["--loss=vlpl"], "vlpl"), (["--loss=aevlp"], "aevlp"),
                                        (["--loss=em_apl", "--warmup_epochs=1", "--vl_positives=aevlp"], "aevlp")])
def test_scores_then_training_with_both_rules(voc_with_scores, args, rule):
    import json

    root = voc_with_scores
    name = "-".join(arg.split("=")[1] for arg in args if arg.startswith(("--loss", "--vl_positives")))
    result = _command(None, "--dataset=voc", f"--data_dir={root / 'data'}", f"--model_dir={root / name}",
                      f"--export_dir={root / ('serving-' + name)}", *SMALL, *args, cwd=str(root))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert f"CLIP pseudo-positives ({rule} rule, scores of {root / 'tiny_clip'})" in result.stdout
    summary = json.load(open(root / name / "results.json"))["vl_positives"]
    assert summary["rule"] == rule and summary["preset"] == str(root / "tiny_clip")
    assert summary["pseudo_positives"] >= 0 and "precision" in summary or summary["pseudo_positives"] == 0


@pytest.mark.slow
def test_the_exported_model_is_the_classifier_alone(voc_with_scores):
    """CLIP is used in training only: a run with pseudo-positives exports the same signature and variables as
    one without."""
    import tensorflow as tf

    root = voc_with_scores
    shapes = {}
    for loss in ("em", "vlpl"):
        result = _command(None, "--dataset=voc", f"--data_dir={root / 'data'}", f"--model_dir={root / ('x' + loss)}",
                          f"--export_dir={root / ('export-' + loss)}", f"--loss={loss}", *SMALL, cwd=str(root))
        assert result.returncode == 0, result.stderr
        loaded = tf.saved_model.load(str(root / ("export-" + loss) / "1"))
        signature = loaded.signatures["serving_default"]
        shapes[loss] = (sorted((v.name, tuple(v.shape)) for v in loaded.variables),
                        signature.structured_input_signature, sorted(signature.structured_outputs))
    assert shapes["em"] == shapes["vlpl"]


@pytest.mark.slow
def test_scores_of_other_data_are_refused_in_one_line(voc_with_scores, tiny_digits_dir):
    root = voc_with_scores
    result = _command(None, f"--data_dir={tiny_digits_dir}", "--loss=vlpl", "--epochs=2",
                      f"--vl_scores={root / 'data' / 'vl_scores' / 'tiny_clip'}", f"--model_dir={root / 'other'}",
                      cwd=str(root))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "were made for" in result.stderr, result.stderr
