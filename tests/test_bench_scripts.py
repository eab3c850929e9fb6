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
    """bench/train_step.py on a tiny network: processes in alternating order, windows of steps, the JSON and table."""
    output = tmp_path / "train_step.json"
    stdout = run_bench("train_step.py", "--backbone=small_cnn", "--image_size=16", "--batch_size=4", "--warmup=1",
                       "--steps=2", "--windows=2", "--rounds=2", "--variants=fit,spe4", f"--output={output}")
    report = json.load(open(output))
    assert report["complete"] and report["config"]["order"] == ["fit", "spe4", "spe4", "fit"]  # round 2 reversed
    assert [(process["round"], process["name"]) for process in report["processes"]] == [
        (0, "fit"), (0, "spe4"), (1, "spe4"), (1, "fit")]
    for process in report["processes"]:
        # fit: batch ends after every step, so two windows of 2 after the warm-up step (1 + 2 * 2 = 5 steps). spe4:
        # 5 steps rounded up to 8, batch ends after steps 4 and 8 only: one window of 4 steps.
        expected = [2, 2] if process["name"] == "fit" else [4]
        assert [window["steps"] for window in process["windows"]] == expected
        assert all(window["seconds"] > 0 and window["own_cores"] > 0 for window in process["windows"])
        assert all(window["other_cores"] >= 0 and window["steal_cores"] >= 0 for window in process["windows"])
        assert process["threads"] == {"intra_op": os.cpu_count(), "inter_op": os.cpu_count()}
    for name, row in report["results"].items():
        steps = [w["seconds_per_step"] for p in report["processes"] if p["name"] == name for w in p["windows"]]
        assert min(steps) <= row["seconds_per_step"] <= max(steps)
        assert row["images_per_second"] == pytest.approx(4 / row["seconds_per_step"]) and len(row["per_round"]) == 2
    # No torch counterpart of the small CNN (and torch is not a dependency): the row says why it is skipped.
    assert report["torch_skipped"] == "no torch counterpart of small_cnn" and "torch" not in report["results"]
    assert "the original code's step | skipped:" in stdout and open(tmp_path / "train_step.md").read() in stdout


def test_train_step_benchmark_says_when_its_python_has_no_torch(tmp_path):
    """The torch process under a Python without torch: one line saying so, a report, no traceback."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no torch in this test')\n")  # whatever is installed
    output = tmp_path / "train_step.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train_step.py"), "--variants=",
                             "--rounds=2", f"--output={output}"], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(blocker.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(output))
    assert "no torch in this test" in report["torch_skipped"] and report["processes"] == []
    assert report["results"] == {} and "the original code's step | skipped: torch" in result.stdout
    assert result.stdout.count("torch skipped") == 1  # asked once, not again in the second round


def test_train_step_benchmark_says_in_one_line_when_a_process_cannot_start(tmp_path):
    missing = tmp_path / "no" / "python"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train_step.py"), "--variants=",
                             f"--torch_python={missing}", f"--output={tmp_path / 'out.json'}"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"bench/train_step.py: cannot start {missing}")


def test_train_step_benchmark_refuses_an_unknown_variant():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train_step.py"), "--variants=fit,bogus"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0 and "unknown ['bogus']" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_profile_step_names_where_our_steps_time_goes(tmp_path):
    """bench/profile_step.py on ResNet-50 at 32 px: TensorFlow's profile is read into ops, phases and categories
    (the event names it relies on are TensorFlow's own: this fails if they change)."""
    output = tmp_path / "profile_step.json"
    stdout = run_bench("profile_step.py", "--notorch", "--image_size=32", "--batch_size=2", "--warmup=1",
                       "--profile_steps=2", f"--profile_output={output}")
    [ours] = json.load(open(output))["sides"]
    assert ours["step_seconds"] > 0 and set(ours["phases_ms"]) == {"forward and loss", "backward", "optimizer"}
    assert any("Conv2DBackpropFilter" in op for op in ours["ops_ms"]) and any("Conv2D" in op for op in ours["ops_ms"])
    total = sum(ours["ops_ms"].values())
    assert 0 < ours["ops_running_ms"] <= total + 1e-6  # two ops at once count once in the wall time
    assert "torch skipped: --notorch" in stdout and "| convolution backward |" in stdout
