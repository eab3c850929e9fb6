"""train_main.py as a user runs it: bad input gives one clear line and exit code 2 (1 for bad data)."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import raw_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_main.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **(env or {})},
    )


def _error_lines(stderr):
    """Our error lines (TensorFlow's C++ start-up log also writes to stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("train_main.py: error:")]


@pytest.mark.parametrize("args, expected", [
    (["--loss=bogus"], "--loss"),
    (["--dataset=imagenet"], "--dataset"),
    (["--batch_size=0"], "--batch_size=0 must be at least 1"),
    (["--epochs=5", "--warmup_epochs=5"], "--warmup_epochs=5 must be smaller than --epochs=5"),
    (["--neg_proportion=1.5"], "--neg_proportion=1.5 must be in (0, 1]"),
    (["--neg_proportion=0"], "--neg_proportion=0.0 must be in (0, 1]"),
    (["--learning_rate=-1"], "--learning_rate=-1.0 must be positive"),
    (["--batch_size=eight"], "batch_size"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--weights=/no/such/file.h5", "--dataset=voc"], "neither 'imagenet', 'none' nor a file"),
    (["stray_argument"], "unexpected arguments"),
    (["--serving_threshold=1.5"], "--serving_threshold=1.5 must be in (0, 1)"),
    (["--dataset=custom", "--weights=none"], "--dataset=custom needs --data_dir"),
    (["--alpha=inf"], "--alpha=inf must be finite"),
    (["--export_dir=train_main.py/serving"], "train_main.py is a file, so no SavedModel can be written there"),
])
def test_usage_errors_exit_2_with_one_line(args, expected):
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert result.stderr.splitlines() == lines  # nothing else: TensorFlow's start-up lines are filtered


def test_missing_data_dir_names_the_directory(tmp_path):
    missing = str(tmp_path / "nowhere")
    result = run("--dataset=voc", f"--data_dir={missing}", "--weights=none")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert missing in result.stderr and "Convert voc" in result.stderr


def test_unconverted_split_is_a_data_error(tmp_path):
    (tmp_path / "train").mkdir()
    result = run("--dataset=voc", f"--data_dir={tmp_path}", "--weights=none")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "no manifest.json" in lines[0]


@pytest.mark.slow
def test_trains_from_the_command_line(tiny_digits_dir, tmp_path):
    result = run(f"--data_dir={tiny_digits_dir}", f"--model_dir={tmp_path}", "--epochs=2", "--warmup_epochs=1",
                 "--patience=5", f"--export_dir={tmp_path / 'serving'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "serving" / "1" / "saved_model.pb")
    assert "APL +" in result.stdout and "val mAP" in result.stdout and "Best epoch" in result.stdout
    results = json.load(open(tmp_path / "results.json"))
    assert results["config"]["loss"] == "em_apl" and results["config"]["epochs"] == 2
    assert results["config"]["batch_size"] == 32  # the digits preset fills what the flags leave unset


def test_an_image_that_does_not_decode_is_a_data_error(tmp_path):
    """A record whose image bytes are not an image stops training with exit code 1 and its image/id, no traceback."""
    import numpy as np
    import tensorflow as tf

    good = tf.io.encode_png(np.zeros((32, 32, 3), np.uint8)).numpy()
    for split in ("train", "val", "test"):
        examples = [(good, "ok.png", [1.0, 0.0], [1.0, 0.0]), (b"not an image", "broken.jpg", [0.0, 1.0], [0.0, 1.0])]
        raw_fixtures.write_split(str(tmp_path / split), dataset="voc", split=split, class_names=("a", "b"),
                            examples=examples)
    result = run("--dataset=voc", f"--data_dir={tmp_path}", "--backbone=small_cnn", "--weights=none",
                 "--image_size=32", "--epochs=2", "--warmup_epochs=1", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "do not decode: broken.jpg" in lines[0]  # named by its image/id


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    model_dir = tmp_path / "run"
    result = run("--dataset=voc", f"--data_dir={tmp_path / 'nowhere'}", "--weights=none", f"--model_dir={model_dir}")
    assert result.returncode == 2 and not model_dir.exists()


@pytest.mark.slow
def test_runs_as_a_module_from_any_directory_with_paths_relative_to_it(tiny_digits_dir, tmp_path):
    """`python -m spml_tf.train` (what `spml-train` runs) from the user's own folder: relative paths are theirs."""
    shutil.copytree(tiny_digits_dir, tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-m", "spml_tf.train", "--data_dir=data", "--model_dir=run", "--loss=an",
                             "--epochs=1", "--per_class"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.load(open(tmp_path / "run" / "results.json"))
    worst_first = sorted(results["per_class_ap"]["test"].items(), key=lambda item: (item[1], item[0]))
    listed = result.stdout.split("AP per class on test, worst first:\n", 1)[1].splitlines()[:10]
    assert [line.split()[0] for line in listed] == [name for name, _ in worst_first]

    result = subprocess.run([sys.executable, "-m", "spml_tf.report", "--model_dir=run", "--out_dir=charts"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "charts")) == ["per_class_ap.png", "training.png"]


@pytest.mark.slow
def test_the_readme_python_example_runs(tiny_digits_dir, tmp_path):
    """README's "From Python" block, run as written in a fresh process (two epochs, on the small digits build)."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = readme.split("### From Python\n\n```python\n", 1)[1].split("```", 1)[0]
    assert "epochs=4, warmup_epochs=2" in block
    block = block.replace("epochs=4, warmup_epochs=2", "epochs=2, warmup_epochs=1")
    for i, name in enumerate(("a.jpg", "b.png")):  # the two image files it predicts
        shutil.copy(sorted(glob.glob(os.path.join(tiny_digits_dir, "images", "**", "*.png"), recursive=True))[i],
                    tmp_path / name)
    script = block + "\nassert probabilities.shape == (2, 10) and len(classifier.labels(probabilities)) == 2\n"
    env = {**os.environ, "PYTHONPATH": ROOT, "SPML_TF_DATA": os.path.dirname(tiny_digits_dir)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "runs" / "notebook" / "results.json")
