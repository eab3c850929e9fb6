"""A run directory is one run's: a user's folder or file is refused, and a second run stops naming the first."""

import os
import signal
import subprocess
import sys
import time

import pytest

from spml_tf.training import run_dir
from spml_tf.core.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = "import sys, time; from spml_tf.training import run_dir; lock = run_dir.claim(sys.argv[1]); print('held', flush=True); " \
       "time.sleep(600)"


def _hold(model_dir):
    """A process that claims `model_dir` and sleeps; returns once it holds the lock."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(model_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_claim_names_the_holder_and_a_killed_holder_frees_the_directory_at_once(tmp_path):
    holder = _hold(tmp_path / "run")
    try:
        with pytest.raises(UsageError, match=rf"in use by another training run \(pid {holder.pid}\)"):
            run_dir.claim(str(tmp_path / "run"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(60)
    lock = run_dir.claim(str(tmp_path / "run"))  # no stale lock to clean up: the OS dropped it with the process
    assert open(lock.path).read().strip() == str(os.getpid())
    lock.release()


def test_a_file_or_a_users_folder_is_refused_untouched(tmp_path):
    afile = tmp_path / "results"
    afile.write_text("mine")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        run_dir.claim(str(afile))
    assert afile.read_text() == "mine"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "paper.pdf").write_bytes(b"pdf")
    with pytest.raises(UsageError, match=r"holds files that no training run wrote \(paper.pdf\)"):
        run_dir.claim(str(folder))
    assert os.listdir(folder) == ["paper.pdf"]


def test_new_empty_marked_and_earlier_run_directories_are_accepted_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "marked").mkdir()
    (tmp_path / "marked" / run_dir.MARK).write_text("")
    (tmp_path / "marked" / "notes.txt").write_text("mine")  # a user's note in a run's directory: never touched
    (tmp_path / "earlier").mkdir()  # a run of a version that wrote no mark: its lock beside a run's names only
    for name in (run_dir.LOCK, run_dir.RESULTS, "results-partial.json", run_dir.CHECKPOINT):
        (tmp_path / "earlier" / name).write_text("")
    (tmp_path / "chief").mkdir()
    (tmp_path / "chief" / run_dir.WORKERS).mkdir()  # another worker of a multi-worker run got there first
    for name in ("new", "empty", "marked", "earlier", "chief"):
        run_dir.claim(str(tmp_path / name)).release()
        assert (tmp_path / name / run_dir.MARK).is_file()
    assert (tmp_path / "marked" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("names", [
    [run_dir.RESULTS],  # a user's own results.json: the data-loss finding of issue 21
    [run_dir.RESULTS, "figures", "paper.tex"],
    [run_dir.LOCK, run_dir.RESULTS, "paper.tex"],  # a lock beside a user's files is no mark
    [run_dir.CHECKPOINT],
])
def test_a_folder_without_the_mark_holding_anything_is_a_users(tmp_path, names):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in names:
        (folder / name).write_text("mine")
    with pytest.raises(UsageError, match="holds files that no training run wrote"):
        run_dir.claim(str(folder))
    assert sorted(os.listdir(folder)) == sorted(names)
    assert all((folder / name).read_text() == "mine" for name in names)


@pytest.mark.slow
def test_two_trainings_on_one_model_dir_and_a_sigterm(tiny_digits_dir, tmp_path):
    """The second run stops at start with one line naming the first's pid; SIGTERM then stops the first promptly
    with one line, its last checkpoint kept."""
    args = [sys.executable, os.path.join(ROOT, "train_main.py"), f"--data_dir={tiny_digits_dir}",
            f"--model_dir={tmp_path}", "--epochs=50", "--patience=50", "--loss=em", "--image_size=16"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / run_dir.LOCK
        deadline = time.monotonic() + 300
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)) and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read()[-3000:]
            time.sleep(0.05)
        second = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        lines = [line for line in second.stderr.splitlines() if line.startswith("train_main.py:")]
        assert lines == [f"train_main.py: error: {tmp_path} is in use by another training run (pid {first.pid}); "
                         "wait for it to end, or pass another --model_dir"]
        assert first.poll() is None  # still training, untroubled
        checkpoint_pointer = tmp_path / "checkpoint" / "LATEST"
        while not checkpoint_pointer.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, stderr = first.communicate(timeout=60)
        assert time.monotonic() - sent < 15 and first.returncode == 128 + signal.SIGTERM
        lines = [line for line in stderr.splitlines() if line.startswith("train_main.py:")]
        assert lines == ["train_main.py: stopped by SIGTERM; what was saved stays: run the same command to continue"]
        assert "Traceback" not in stderr and checkpoint_pointer.exists()
    finally:
        first.kill()
        first.wait()
