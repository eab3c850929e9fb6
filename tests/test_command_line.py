"""The command line as a new user meets it: only the command's own lines (TensorFlow's log filtered), usage
errors in one line before TensorFlow is loaded, a --help with this run's values, --print_config, method names
that carry over, "did you mean", and progress that reads well in a log file."""

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from spml_tf import choices
from spml_tf.core import quiet
from spml_tf.core.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_main.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})


# --- Usage errors: exactly one line on stderr, exit 2 --------------------------------------------------------------


@pytest.mark.parametrize("args, line", [
    (["--loss=emapl"], "train_main.py: error: --loss='emapl' is not one of full, an, an_ls, wan, epr, role, em, "
                       "em_apl, ll_r, ll_ct, ll_cp, gr, gr_apl, vlpl, aevlp; did you mean 'em_apl'?"),
    (["--dataset=vocc"], "train_main.py: error: --dataset='vocc' is not one of digits, voc, coco, nuswide, cub, "
                         "custom; did you mean 'voc'?"),
    (["--backbone=resnet_50"], "train_main.py: error: --backbone='resnet_50' is not one of resnet50, "
                               "keras_resnet50, small_cnn; did you mean 'resnet50'?"),
    (["--loss=em_apl+boostlu", "--head=linear"],
     "train_main.py: error: --loss=em_apl+boostlu names the boostlu head but --head=linear: give one of them"),
    (["--epochs=3"], "train_main.py: error: --warmup_epochs=5 must be smaller than --epochs=3 with --loss=em_apl, "
                     "or APL never runs: add --warmup_epochs=2"),
    (["--epochs=1"], "train_main.py: error: --warmup_epochs=5 must be smaller than --epochs=1 with --loss=em_apl, "
                     "or APL never runs: use --loss=em (no APL) or --epochs=2 --warmup_epochs=1"),
    (["--no_such_flag=1"], "train_main.py: error: Unknown command line flag 'no_such_flag'"),
    (["--alpha=inf"], "train_main.py: error: --alpha=inf must be finite, not inf or nan"),
])
def test_a_usage_error_is_exactly_one_line_and_exit_2(args, line):
    result = train(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line] and result.stdout == ""


def test_a_wrong_name_is_refused_before_tensorflow_is_imported():
    code = textwrap.dedent("""
        import sys
        sys.argv = ["spml-train", "--loss=em_apll"]
        from spml_tf import train
        try:
            train.main()
        except SystemExit as stop:
            print(stop.code, "tensorflow" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert "did you mean 'em_apl'?" in result.stderr


def test_the_names_to_choose_from_are_the_registrys():
    from spml_tf import config, methods

    assert choices.LOSSES == tuple(methods.LOSSES)
    assert set(config.PRESETS) == set(choices.DATASETS)


def test_method_names_split_into_loss_and_head():
    assert choices.split_method("em_apl") == ("em_apl", None)
    assert choices.split_method("em_apl", "boostlu") == ("em_apl", "boostlu")
    assert choices.split_method("ll_r+boostlu") == ("ll_r", "boostlu")
    assert choices.split_method("ll_r+boostlu", "boostlu") == ("ll_r", "boostlu")
    with pytest.raises(UsageError, match="--head='boost' is not one of linear, boostlu; did you mean 'boostlu'"):
        choices.split_method("ll_r+boost")
    assert [choices.method_name(loss, head) for loss, head in [("em", "linear"), ("em", "boostlu")]] == [
        "em", "em+boostlu"]


def test_did_you_mean_only_when_a_name_is_close():
    with pytest.raises(UsageError, match=r"did you mean 'nuswide'\?$"):
        choices.check("dataset", "nus_wide")
    with pytest.raises(UsageError) as error:
        choices.check("dataset", "imagenet")
    assert "did you mean" not in str(error.value)


# --- --help and --print_config ---------------------------------------------------------------------------------------


def _flag_lines(text):
    return {line.split("=")[0].strip(): line.strip() for line in text.splitlines() if line.startswith("  --")}


def test_help_lists_the_flags_by_group_with_the_digits_presets_values():
    result = train("--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    groups = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert groups == ["data:", "network:", "method:", "optimisation:", "scale:", "output:",
                      "other methods' hyper-parameters:"]
    shown = _flag_lines(text)
    assert shown["--batch_size"] == "--batch_size=32 [preset]"
    assert shown["--backbone"] == "--backbone=small_cnn [preset]"
    assert shown["--loss"] == "--loss=em_apl"
    assert shown["--warmup_epochs"] == "--warmup_epochs=5"
    for name, known in [("loss", choices.LOSSES), ("head", choices.HEADS), ("backbone", choices.BACKBONES),
                        ("strategy", choices.STRATEGIES)]:
        assert f"One of: {', '.join(known)}." in " ".join(text.split()), name
    assert "helpfull" not in text and "absl" not in text


def test_help_shows_the_protocol_of_the_chosen_dataset_and_method():
    result = train("--dataset=voc", "--loss=ll_r+boostlu", "--epochs=4", "-h")
    assert result.returncode == 0 and result.stderr == ""
    shown = _flag_lines(result.stdout)
    assert shown["--loss"] == "--loss=ll_r+boostlu [given]"
    assert shown["--head"] == "--head=boostlu [given]"
    assert shown["--epochs"] == "--epochs=4 [given]"
    assert shown["--head_lr_mult"] == "--head_lr_mult=10 [protocol]"
    assert shown["--batch_size"] == "--batch_size=16 [protocol]"  # the LL authors' VOC batch, not the paper's 8
    assert shown["--ll_delta"].startswith("--ll_delta=")
    method_part = result.stdout.split("\nmethod:\n")[1].split("\noptimisation:\n")[0]
    assert "--ll_delta" in method_part and "--alpha" not in method_part  # em's, among the others


def test_print_config_prints_the_resolved_run_and_exits_0():
    result = train("--dataset=cub", "--loss=em_apl+boostlu", "--print_config")
    assert result.returncode == 0 and result.stderr == ""
    config = json.loads(result.stdout)
    assert config["method"] == "em_apl+boostlu" and config["loss"] == "em_apl" and config["head"] == "boostlu"
    assert config["learning_rate"] == 1e-4 and config["batch_size"] == 8  # CUB's preset


def test_other_commands_have_a_help_of_their_own_flags():
    for module, flag in [("spml_tf.export", "--export_dir"), ("spml_tf.report", "--out_dir"),
                         ("spml_tf.convert", "--raw_dir"), ("spml_tf.predict", "--saved_model")]:
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                                timeout=300)
        assert result.returncode == 0 and result.stderr == "", (module, result.stderr)
        assert flag in result.stdout and "helpfull" not in result.stdout, module


# --- TensorFlow's log ------------------------------------------------------------------------------------------------

TF_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796188293.414965   25050 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796188293.417382   25050 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
    "E0000 00:00:1796188300.164171   25050 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "W1202 05:10:31.123456   25050 cpu_feature_guard.cc:210] This TensorFlow binary is optimized",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.",
]
KEPT = ["F0000 00:00:1796188300.164171   25050 fatal.cc:1] Check failed: something", "a line of a library"]


def test_tensorflows_log_lines_are_filtered_from_descriptor_2_and_fatal_ones_kept():
    code = textwrap.dedent(f"""
        import os, sys
        from spml_tf.core import quiet
        quiet.install(verbose={{verbose}})
        os.write(2, {"".join(line + chr(10) for line in TF_LINES[:3] + KEPT[:1] + TF_LINES[3:] + KEPT[1:])!r}
                 .encode())
        print("our own line", file=sys.stderr)
    """)
    for verbose in (False, True):
        result = subprocess.run([sys.executable, "-c", code.format(verbose=verbose)], capture_output=True,
                                text=True, cwd=ROOT, timeout=60)
        lines = result.stderr.splitlines()
        assert result.returncode == 0
        if verbose:
            assert set(TF_LINES + KEPT) <= set(lines)
        else:
            assert sorted(lines) == sorted(KEPT + ["our own line"]), result.stderr


def test_the_noise_pattern_leaves_our_lines():
    assert all(quiet.NOISE.match(line.encode()) for line in TF_LINES)
    ours = ["spml-train: error: --loss='x' is not one of ...", "epoch 1/10: loss 0.1", "I0 not a log line"] + KEPT
    assert not any(quiet.NOISE.match(line.encode()) for line in ours)


# --- Progress --------------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run_progress(mode, stream, steps=6, every_steps=None, epochs=2):
    from spml_tf.training import fit_progress

    progress = fit_progress.FitProgress(mode, epochs, batch_size=4, every_steps=every_steps, stream=stream)
    progress.set_params({"steps": steps, "epochs": epochs})
    fit_progress.REDRAW_SECONDS = 0.0
    try:
        for epoch in range(epochs):
            progress.on_epoch_begin(epoch)
            for step in range(steps):
                progress.on_train_batch_end(step, {"loss": 0.5})
            progress.on_epoch_end(epoch, {"loss": 0.5})
            stream.write(f"epoch {epoch + 1}/{epochs}: loss 0.5000\n")
    finally:
        fit_progress.REDRAW_SECONDS = 0.2
    return stream.getvalue()


def test_lines_mode_writes_plain_lines_every_n_steps():
    text = _run_progress("auto", io.StringIO(), steps=6, every_steps=2)  # not a terminal: lines
    lines = text.splitlines()
    assert len(lines) == 2 * (3 + 1) and "\r" not in text and "\x1b" not in text and "\b" not in text
    assert lines[0].startswith("epoch 1/2 step 2/6 (33%)  loss 0.5000  ") and "images/s" in lines[0]
    assert lines[0].endswith("left in the epoch") and lines[3] == "epoch 1/2: loss 0.5000"


def test_bar_mode_redraws_one_line_and_clears_it_for_the_epochs_line():
    text = _run_progress("auto", _Terminal(), steps=3)
    first_epoch = text.split("epoch 1/2: loss")[0]
    assert first_epoch.count("\r\x1b[K") == 3 + 1 and "\n" not in first_epoch  # 3 redraws, then cleared
    assert text.count("\n") == 2  # one line per epoch stays on the terminal


def test_none_mode_is_silent_and_a_wrong_mode_is_refused():
    assert _run_progress("none", _Terminal()) == "epoch 1/2: loss 0.5000\nepoch 2/2: loss 0.5000\n"
    from spml_tf.training import fit_progress

    with pytest.raises(ValueError, match="not one of auto, bar, lines, none"):
        fit_progress.resolve("fancy")


def test_a_redirected_run_logs_plain_lines_one_per_epoch(tiny_digits_dir, tmp_path):
    result = train(f"--data_dir={tiny_digits_dir}", f"--model_dir={tmp_path / 'run'}", "--epochs=2",
                   "--warmup_epochs=1", "--patience=5", "--log_every_steps=2", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # TensorFlow's start-up lines filtered
    out = result.stdout
    assert "\r" not in out and "\x1b" not in out and "\b" not in out
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("epoch ")]
    assert max(map(len, progress)) < 200 and len(out) < 4000  # (the last line names the run's path: any length)
    for epoch in (1, 2):
        assert sum(line.startswith(f"epoch {epoch}/2: loss") for line in lines) == 1
        steps = [line for line in lines if line.startswith(f"epoch {epoch}/2 step ")]
        assert len(steps) == 2 and all("images/s" in line for line in steps)  # 5 steps: after steps 2 and 4
    apl = next(line for line in lines if line.startswith("epoch 1/2: loss"))
    assert "APL +" in apl and ".0 " not in apl
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "em_apl"
    assert isinstance(results["history"][0]["apl_new_pseudo_negatives"], int)
