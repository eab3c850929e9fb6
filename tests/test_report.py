"""spml-report: a finished run's results.json as PNG charts, and the worst-first list of classes."""

import json
import os
import subprocess
import sys

import pytest

from spml_tf import report
from spml_tf.training import metrics
from spml_tf.core.errors import DataError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def _results(apl=True, test=True):
    per_class = {"cat": 80.0, "dog": 35.5, "bird": 35.5, "fish": 61.0}
    return {
        "config": {"image_size": 24, "threshold": 0.75, "loss": "em_apl", "val_set_variant": "clean"},
        "class_names": sorted(per_class),
        "val": {"map": 55.0},
        "test": {"map": 53.0} if test else None,
        "history": [{"epoch": 1, "loss": 0.9, "val_map": 40.0}, {"epoch": 2, "loss": 0.6, "val_map": 55.0}],
        "best_epoch": 2,
        "apl_rounds": [{"epoch": 1, "new_pseudo_negatives": 30, "total_pseudo_negatives": 30, "precision": 97.0,
                        "total_precision": 97.0}] if apl else [],
        "per_class_ap": {"val": per_class, "test": per_class if test else None},
    }


def _run(tmp_path, results):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_worst_classes_first_ties_by_name():
    ranked = metrics.worst_classes(_results()["per_class_ap"]["test"])
    assert ranked == [("bird", 35.5), ("dog", 35.5), ("fish", 61.0), ("cat", 80.0)]
    assert metrics.worst_classes({"a": 1.0, "b": 0.0}, count=1) == [("b", 0.0)]


def test_writes_the_three_charts(tmp_path):
    run = _run(tmp_path, _results())
    written = report.render(str(run))
    assert [os.path.basename(p) for p in written] == [report.TRAINING, report.APL, report.PER_CLASS]
    for path in written:
        assert open(path, "rb").read(8) == PNG


def test_a_run_without_apl_has_no_apl_chart_and_val_stands_in_for_test(tmp_path):
    run = _run(tmp_path, _results(apl=False, test=False))
    written = report.render(str(run), str(tmp_path / "charts"))
    assert sorted(os.listdir(tmp_path / "charts")) == sorted([report.TRAINING, report.PER_CLASS])
    assert all(path.startswith(str(tmp_path / "charts")) for path in written)


def test_not_a_run_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="results.json not found"):
        report.render(str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "spml_tf.report", f"--model_dir={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("report:")]  # not TensorFlow's logs
    assert ours == [f"report: error: {tmp_path}/results.json not found: --model_dir "
                    "must be the directory of a finished training run"]


def _edited(results, path, value):
    """`results` with the field at `path` (keys and indices) set to `value`, or removed when value is DELETE."""
    target = results
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return results


DELETE = object()


@pytest.mark.parametrize("path, value, detail", [
    (("history",), {"1": {"epoch": 1}}, "results.history: a dict is not a list"),
    (("history", 0, "epoch"), DELETE, "results.history[0]: no 'epoch'"),
    (("history", 1, "loss"), "abc", "results.history[1].loss: 'abc' is not a number"),
    (("apl_rounds", 0, "new_pseudo_negatives"), DELETE, "results.apl_rounds[0]: no 'new_pseudo_negatives'"),
    (("apl_rounds", 0), {"epoch": 1}, "results.apl_rounds[0]: no 'new_pseudo_negatives'"),
    (("per_class_ap", "test", "cat"), "high", "['cat']: 'high' is not a number"),
    (("per_class_ap", "test", "cat"), 180.0, "is above 100"),
    (("best_epoch",), 7, "results.best_epoch 7 is not an epoch of its history"),
    (("config", "threshold"), DELETE, "results.config: no 'threshold'"),
    (("config", "image_size"), "big", "results.config.image_size: 'big' is not a whole number"),
])
def test_a_hand_edited_results_file_is_one_line_naming_the_field(tmp_path, path, value, detail):
    run = _run(tmp_path, _edited(_results(), path, value))
    with pytest.raises(DataError) as error:
        report.render(str(run))
    assert detail in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert os.listdir(run) == ["results.json"]  # nothing drawn


def test_results_that_are_a_directory_or_nested_too_deep_are_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").mkdir()
    with pytest.raises(DataError, match="results.json is a directory"):
        report.render(str(tmp_path / "a"))
    run = _run(tmp_path, {})
    (run / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="JSON nested too deeply"):
        report.render(str(run))


def test_a_hundred_thousand_classes_chart_the_worst_in_seconds(tmp_path):
    results = _results()
    names = [f"class{c:06d}" for c in range(100_000)]
    results["class_names"] = names
    results["per_class_ap"] = {split: {name: float(c % 997) / 10 for c, name in enumerate(names)}
                               for split in ("val", "test")}
    run = _run(tmp_path, results)
    written = report.render(str(run))
    assert os.path.basename(written[-1]) == report.PER_CLASS
    results["class_names"] = names + ["one too many"]
    run = _run(tmp_path / "more", results)
    with pytest.raises(DataError, match="results.class_names: a list of 100,001 items, not 1 to 100000"):
        report.render(str(run))


def test_charts_into_a_place_that_cannot_be_written_are_one_line(tmp_path):
    run = _run(tmp_path, _results())
    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError, match=r"cannot write the charts into .*afile/charts \(.*\); pass --out_dir="):
        report.render(str(run), str(tmp_path / "afile" / "charts"))
