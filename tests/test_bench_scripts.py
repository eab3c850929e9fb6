"""bench/input_pipeline.py and bench/metrics_apl.py end to end on tiny sizes: the JSON each promises."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(script, *flags):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *flags],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_input_pipeline_benchmark_writes_its_report(tmp_path):
    output = tmp_path / "input_pipeline.json"
    stdout = run_bench("input_pipeline.py", "--images=24", "--repeats=1", "--image_size=64", "--batch_size=8",
                       "--workers=1", f"--output={output}")
    report = json.load(open(output))
    assert report["images"] == 24 and report["image_size"] == 64 and report["source_size"] == [500, 375]
    assert report["megabytes"] > 0 and report["shards"] >= 1
    has_pillow = report["machine"]["pillow"] is not None
    for key in ("a", "a'", "a''", "b", "b'", "c"):
        row = report["results"][key]
        if key in ("b", "b'") and not has_pillow:
            assert row is None and report["ratios"][f"a/{key}"] is None
            continue
        assert row["images_per_second"] > 0 and len(row["passes"]) == 1
    assert report["ratios"]["a/c"] == pytest.approx(
        report["results"]["a"]["images_per_second"] / report["results"]["c"]["images_per_second"], rel=1e-2)
    assert set(report["targets"]) == {"a/b", "a/b'", "a/c"} and report["targets"]["a/c"]["target"] == 0.8
    assert report["machine"]["cpus"] >= 1 and report["machine"]["tensorflow"]
    assert "| (a) |" in stdout and "| a/c |" in stdout


@pytest.mark.slow
def test_metrics_apl_benchmark_writes_its_report(tmp_path):
    output = tmp_path / "metrics_apl.json"
    stdout = run_bench("metrics_apl.py", "--rows=500", "--classes=10", "--repeats=2", f"--output={output}")
    report = json.load(open(output))
    assert report["rows"] == 500 and report["classes"] == 10 and 1 <= report["positives_per_row"] <= 4
    check = report["check"]
    assert check["map_abs_difference"] <= 1e-9 and check["precision_recall_at_k_equal"] and check["apl_equal"]
    assert check["apl_pseudo_negatives"] > 0
    for side in ("ours", "baseline"):
        for part in ("map", "precision_recall_at_k", "apl_round"):
            assert report[side][f"{part}_seconds"] > 0 and len(report[side]["runs"][part]) == 2
        assert report[side]["total_seconds"] > 0
    assert report["target"]["seconds"] == 1.0 and report["target"]["met"] == (report["ours"]["total_seconds"] < 1.0)
    assert "| one APL round |" in stdout


@pytest.mark.slow
def test_train_step_benchmark_writes_its_report(tmp_path):
    """bench/train_step.py on a tiny network and size: every variant timed, torch compared or its absence said."""
    output = tmp_path / "train_step.json"
    stdout = run_bench("train_step.py", "--backbone=small_cnn", "--image_size=16", "--batch_size=4", "--warmup=1",
                       "--steps=4", "--repeats=1", f"--output={output}")
    report = json.load(open(output))
    assert set(report["ours"]) == {"fit", "fit_bare", "jit", "spe4", "bf16", "shards"}
    assert all(row["images_per_second"] > 0 and len(row["repeats"]) == 1 for row in report["ours"].values())
    assert report["config"]["image_size"] == 16 and report["config"]["backbone"] == "small_cnn"
    # No torch counterpart of the small CNN (and torch is not a dependency): the row says why it is skipped.
    assert report["torch"] is None and report["torch_skipped"]
    assert "original code's step | skipped:" in stdout and open(tmp_path / "train_step.md").read() in stdout
