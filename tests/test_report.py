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


@pytest.fixture
def pyplot():
    pyplot = report._pyplot()
    yield pyplot
    pyplot.close("all")


def _history(epochs):
    return [{"epoch": e, "loss": 1.0 - 0.1 * e + (0.3 if e >= 3 else 0.0), "val_map": 40.0 + e} for e in epochs]


def _rounds(epochs, precision=True):
    rounds, total = [], 0
    for epoch in epochs:
        new = 5000 if not rounds else 120
        total += new
        rounds.append({"epoch": epoch, "new_pseudo_negatives": new, "total_pseudo_negatives": total})
        if precision:
            rounds[-1].update(precision=97.0, total_precision=96.5)
    return rounds


def _apl_marks(axes):
    """The vertical lines labelled as APL's start: their x."""
    return [line.get_xdata()[0] for line in axes.get_lines()
            if "APL" in line.get_label() and len(set(line.get_xdata())) == 1]


def test_the_training_chart_marks_the_first_epoch_trained_with_apl_labels(pyplot):
    figure = report._training_figure(pyplot, _history(range(1, 6)), 4, _rounds([2, 3, 4]))
    loss_axes, map_axes = figure.axes
    assert _apl_marks(loss_axes) == [3] and _apl_marks(map_axes) == [3]
    assert [line.get_label() for line in loss_axes.get_lines() if "APL" in line.get_label()] == ["APL starts (epoch 3)"]
    assert [text.get_text() for text in loss_axes.get_legend().get_texts()] == ["APL starts (epoch 3)"]
    assert "best epoch 4" in [text.get_text() for text in map_axes.get_legend().get_texts()]
    for rounds in ([], _rounds([5])):  # a run without APL, and one whose only round followed its last epoch
        figure = report._training_figure(pyplot, _history(range(1, 6)), 4, rounds)
        assert all(_apl_marks(axes) == [] for axes in figure.axes)
        assert figure.axes[0].get_legend() is None


def _figures(pyplot, results):
    per_class = results["per_class_ap"]["test"]
    return {"training": report._training_figure(pyplot, results["history"], results["best_epoch"],
                                                results["apl_rounds"]),
            "apl": report._apl_figure(pyplot, results["apl_rounds"]),
            "per_class": report._per_class_figure(pyplot, per_class, "test")}


def test_every_chart_names_its_axes(pyplot):
    figures = _figures(pyplot, _results())
    labels = {name: [(axes.get_xlabel(), axes.get_ylabel()) for axes in figure.axes]
              for name, figure in figures.items()}
    assert labels == {"training": [("epoch", "loss"), ("epoch", "mAP (%)")],
                      "apl": [("epoch", "pseudo-negatives"), ("epoch", "precision (%)")],
                      "per_class": [("AP (%)", "")]}


@pytest.mark.parametrize("epochs", [[1], [1, 2], [1, 2, 3]])
def test_epoch_axes_show_whole_epochs(pyplot, epochs):
    from matplotlib.ticker import MaxNLocator

    results = _results()
    results["history"] = _history(epochs)
    results["best_epoch"] = epochs[-1]
    results["apl_rounds"] = _rounds(epochs)
    figures = _figures(pyplot, results)
    for figure in (figures["training"], figures["apl"]):
        figure.canvas.draw()
        for axes in figure.axes:
            assert isinstance(axes.xaxis.get_major_locator(), MaxNLocator)
            low, high = axes.get_xlim()
            shown = [tick for tick in axes.get_xticklabels() if low <= tick.get_position()[0] <= high]
            assert shown and all(float(tick.get_position()[0]).is_integer() for tick in shown)
            assert all(tick.get_text().isdigit() for tick in shown), [tick.get_text() for tick in shown]


def test_bars_are_labelled_with_their_values(pyplot):
    figures = _figures(pyplot, _results())
    (axes,) = figures["per_class"].axes
    assert [text.get_text() for text in axes.texts] == ["35.5", "35.5", "61.0", "80.0"]  # bird, dog, fish, cat
    assert list(axes.containers[0].datavalues) == [35.5, 35.5, 61.0, 80.0]
    count_axes = report._apl_figure(pyplot, _rounds([1, 2, 3])).axes[0]
    assert [text.get_text() for text in count_axes.texts] == ["5,000", "120", "120"]
    assert list(count_axes.containers[0].datavalues) == [5000, 120, 120]


def _overlap(one, other):
    """Whether two display boxes share more than an edge."""
    return one.x0 < other.x1 and other.x0 < one.x1 and one.y0 < other.y1 and other.y0 < one.y1


def test_legends_cover_no_plot_nor_its_labels(pyplot):
    results = _results()
    results["history"] = _history(range(1, 6))
    results["apl_rounds"] = _rounds([2, 3, 4])
    figures = _figures(pyplot, results)
    legends = 0
    for name, figure in figures.items():
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axes in figure.axes:
            if axes.get_legend() is None:
                continue
            legends += 1
            box = axes.get_legend().get_window_extent(renderer)
            for other in figure.axes:
                covered = [other.get_window_extent(renderer), other.xaxis.get_tightbbox(renderer),
                           other.yaxis.get_tightbbox(renderer), other.title.get_window_extent(renderer)]
                assert not any(_overlap(box, part) for part in covered if part is not None), name
    assert legends == 4  # loss, mAP, pseudo-negatives and their precision
