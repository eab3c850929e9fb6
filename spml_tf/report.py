"""A finished run as PNG charts: `spml-report --model_dir=RUN` (or `python -m spml_tf.report`).

Reads RUN/results.json only and writes, beside it (or under --out_dir):
  training.png       training loss and validation mAP per epoch, the best epoch and the start of APL marked
  apl.png            APL's pseudo-negatives per round and their precision (runs with APL)
  per_class_ap.png   every class's AP on test (val when there is no test split), worst first

Needs matplotlib: `pip install "spml-tf[report]"` (a clone: requirements-report.txt).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from spml_tf import cli
from spml_tf.training import metrics, run_dir
from spml_tf.training import results as results_lib
from spml_tf.core.errors import UsageError, reason

TRAINING, APL, PER_CLASS = run_dir.CHARTS  # names the run directory's check knows as a run's own


def render(model_dir, out_dir=None):
    """Writes the charts of the run in `model_dir`; returns the paths written."""
    import tensorflow as tf

    results = results_lib.read(model_dir)
    pyplot = _pyplot()
    out_dir = out_dir or model_dir
    try:
        tf.io.gfile.makedirs(out_dir)
        rounds = results.get("apl_rounds") or []
        training = _training_figure(pyplot, results["history"], results["best_epoch"], rounds)
        written = [_save(pyplot, training, out_dir, TRAINING)]
        if rounds:
            written.append(_save(pyplot, _apl_figure(pyplot, rounds), out_dir, APL))
        per_class = results["per_class_ap"]
        split = "test" if per_class.get("test") else "val"
        if per_class.get(split):
            written.append(_save(pyplot, _per_class_figure(pyplot, per_class[split], split), out_dir, PER_CLASS))
    except (tf.errors.OpError, OSError) as error:  # read-only, not a directory, no permission, disk full
        raise UsageError(f"cannot write the charts into {out_dir} ({reason(error)}); pass --out_dir=<a directory "
                         "you can write>") from None
    finally:
        pyplot.close("all")
    return written


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError('the charts need matplotlib: pip install "spml-tf[report]" '
                         "(in a clone: pip install -r requirements-report.txt)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as pyplot

    return pyplot


def _save(pyplot, figure, out_dir, name):
    import tensorflow as tf

    from spml_tf.core import files

    path = files.join(out_dir, name)

    def write(temporary):
        with tf.io.gfile.GFile(temporary, "wb") as f:
            figure.savefig(f, format="png", dpi=110, bbox_inches="tight")

    files.replace(path, write)
    pyplot.close(figure)
    return path


def _training_figure(pyplot, history, best_epoch, rounds=()):
    """Loss and validation mAP per epoch; the best epoch marked, and where APL's pseudo-negatives start counting
    in the loss (it rises there)."""
    epochs = [record["epoch"] for record in history]
    figure, (loss_axes, map_axes) = pyplot.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    loss_axes.plot(epochs, [record.get("loss", float("nan")) for record in history], marker="o")
    loss_axes.set(title="training loss")
    map_axes.plot(epochs, [record.get("val_map", float("nan")) for record in history], marker="o", color="tab:green")
    map_axes.set(title="validation mAP (%)")
    if best_epoch is not None:
        map_axes.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
    start = _apl_start(rounds)
    if start is not None and start <= max(epochs):  # a round after the last epoch changed no epoch's labels
        for axes in (loss_axes, map_axes):
            axes.axvspan(start, max(epochs), color="tab:red", alpha=0.07)
            axes.axvline(start, color="tab:red", linestyle=":", label=f"APL starts (epoch {start})")
    _epoch_axes(loss_axes, "loss")
    _epoch_axes(map_axes, "mAP (%)")
    return figure


def _apl_start(rounds):
    """The first epoch trained with APL's pseudo-negatives (the one after the first round), or None."""
    return min(record["epoch"] for record in rounds) + 1 if rounds else None


def _epoch_axes(axes, ylabel):
    """Labels, a grid, whole epochs on the x axis, and the legend (if any) beside the plot, off the data."""
    from matplotlib.ticker import MaxNLocator

    axes.set(xlabel="epoch", ylabel=ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # a 1-epoch run too
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _apl_figure(pyplot, rounds):
    """APL's pseudo-negatives per round (new ones as labelled bars, the total as a line) and their precision."""
    epochs = [record["epoch"] for record in rounds]
    figure, (count_axes, precision_axes) = pyplot.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    bars = count_axes.bar(epochs, [record["new_pseudo_negatives"] for record in rounds], label="new")
    count_axes.bar_label(bars, fmt="{:,.0f}", label_type="center", fontsize=8)
    count_axes.plot(epochs, [record["total_pseudo_negatives"] for record in rounds], marker="o", color="tab:orange",
                    label="total")
    count_axes.set(title="APL pseudo-negatives per round", axisbelow=True)  # the grid behind the bars
    _epoch_axes(count_axes, "pseudo-negatives")
    if "precision" in rounds[0]:
        precision_axes.plot(epochs, [record["precision"] for record in rounds], marker="o", label="new")
        precision_axes.plot(epochs, [record["total_precision"] for record in rounds], marker="o", label="total")
        precision_axes.set(title="precision of the pseudo-negatives (%)")
        _epoch_axes(precision_axes, "precision (%)")
    else:
        precision_axes.text(0.5, 0.5, "precision unknown\n(no full training labels)", ha="center", va="center")
        precision_axes.set_axis_off()
    return figure


MAX_BARS = 60  # a chart of more classes is unreadable (and 100,000 bars take minutes and gigabytes)


def _per_class_figure(pyplot, per_class_ap, split):
    """The worst MAX_BARS classes' AP as bars labelled with their value, worst at the top."""
    ranked = metrics.worst_classes(per_class_ap, MAX_BARS)
    figure, axes = pyplot.subplots(figsize=(7, max(2.5, 0.22 * len(ranked) + 1)), layout="constrained")
    bars = axes.barh([name for name, _ in ranked], [ap for _, ap in ranked])
    axes.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    axes.invert_yaxis()  # worst at the top
    shown = f", the {len(ranked)} lowest of {len(per_class_ap):,}" if len(ranked) < len(per_class_ap) else ""
    axes.set(title=f"AP per class on {split} (%){shown}", xlabel="AP (%)", xlim=(0, 100))
    axes.grid(axis="x", alpha=0.3)
    return figure


def define_flags():
    flags.DEFINE_string("model_dir", None, "Directory of a finished training run.")
    flags.DEFINE_string("out_dir", None, "Where the PNG files go (default: the run directory).")


def run():
    if not flags.FLAGS.model_dir:
        raise UsageError("--model_dir is required")
    for path in render(flags.FLAGS.model_dir, flags.FLAGS.out_dir):
        print(f"Wrote {path}")


def main():
    cli.run_command("report", define_flags, run)


if __name__ == "__main__":
    main()
