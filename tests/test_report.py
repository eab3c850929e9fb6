"""spml-report: a finished run's results.json as PNG charts, and the worst-first list of classes."""

import json
import os
import subprocess
import sys

import pytest

from spml_tf import metrics, report
from spml_tf.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def _results(apl=True, test=True):
    per_class = {"cat": 80.0, "dog": 35.5, "bird": 35.5, "fish": 61.0}
    return {
        "history": [{"epoch": 1, "loss": 0.9, "val_map": 40.0}, {"epoch": 2, "loss": 0.6, "val_map": 55.0}],
        "best_epoch": 2,
        "apl_rounds": [{"epoch": 1, "new_pseudo_negatives": 30, "total_pseudo_negatives": 30, "precision": 97.0,
                        "total_precision": 97.0}] if apl else [],
        "per_class_ap": {"val": per_class, "test": per_class if test else None},
    }


def _run(tmp_path, results):
    run = tmp_path / "run"
    run.mkdir()
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
