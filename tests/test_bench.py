"""bench/quality.py end to end on a tiny run: the JSON, Markdown and PNG it promises."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quality_benchmark_writes_its_report(tiny_digits_dir, tmp_path):
    output = tmp_path / "quality.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--losses=an,em_apl", "--seeds=2",
         "--lr_grid=1e-3", "--epochs=2", "--warmup_epochs=1", f"--data_dir={tiny_digits_dir}",
         f"--output={output}"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(output))
    assert set(report["results"]) == {"an", "em_apl"}
    for name, entry in report["results"].items():
        maps = [run["test_map"] for run in entry["runs"]]
        assert len(maps) == 2 and entry["mean"] == pytest.approx(sum(maps) / 2)
        assert entry["std"] >= 0 and entry["learning_rate"] == 1e-3
        assert entry["lr_search"] == {}  # one rate: used as it is, nothing searched
    assert report["results"]["em_apl"]["apl_precision"] is not None
    assert report["results"]["an"]["apl_precision"] is None
    assert report["config"]["seeds"] == [1, 2] and "machine" in report["config"]
    assert "| `em_apl` |" in open(tmp_path / "quality.md").read()
    assert open(tmp_path / "quality.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_unknown_loss_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--losses=bogus"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0 and "unknown ['bogus']" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_conversion_benchmark_writes_its_report(tmp_path):
    output = tmp_path / "convert.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "convert.py"), "--images=40", "--workers=1",
         f"--output={output}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(output))
    assert report["images"] == 40 and report["megabytes"] > 0
    [row] = report["results"]
    # The report rounds the rate to 0.1 image/s: on a slow machine that is more than 1% of it.
    assert row["workers"] == 1 and row["images_per_second"] == pytest.approx(40 / row["seconds"], rel=0.01, abs=0.05)
