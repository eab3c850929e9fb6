"""How good must CLIP's pseudo-positives be for a loss to gain from them? A simulated scorer on digits.

    python bench/vl_quality.py [--losses=an,epr,ll_r,em_apl,gr,vlpl,aevlp] [--precisions=1,0.75,0.5,0.25]
                               [--recalls=0.5] [--seeds=1] [--output=bench/results/vl_quality.json]

No real CLIP helps on 24x24 digit mosaics, so the pseudo-positives are drawn from the full training labels: of
the positives each image's single observed label leaves unknown, a share `recall` is chosen at random, and
false positives drawn from the true negatives are added until `precision` of the chosen are true. Every loss
then trains with them (`train_and_evaluate(..., positives=...)`, the path --vl_positives takes: vlpl and aevlp
weigh them with their own terms, the others take them as positives) and without them (the baseline; vlpl and
aevlp without pseudo-positives are EM and GR's terms, so their baseline is em and gr). Reported: test mAP (epoch
chosen on validation mAP) and its gain over the baseline, per precision and recall. Writes the JSON, a Markdown
table (.md) and a chart (.png) of gain against precision.
"""

import dataclasses
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from spml_tf import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The flags (defined only when run as a script: tests import simulate() beside other flags)."""
    flags.DEFINE_list("losses", ["an", "epr", "ll_r", "em_apl", "gr", "vlpl", "aevlp"], "Losses to train.")
    flags.DEFINE_list("precisions", ["1", "0.75", "0.5", "0.25"], "Precisions of the simulated pseudo-positives.")
    flags.DEFINE_list("recalls", ["0.5"], "Shares of the unknown true positives the simulated scorer finds.")
    flags.DEFINE_integer("seeds", 1, "Seeds per setting (1..N).")
    flags.DEFINE_integer("epochs", None, "Override the preset's epochs (for a quick check).")
    flags.DEFINE_integer("warmup_epochs", None, "Override the preset's APL warm-up (for a quick check).")
    flags.DEFINE_string("data_dir", "", "digits data directory (default: the cache).")
    flags.DEFINE_string("output", "bench/results/vl_quality.json", "Where the JSON goes (.md and .png beside it).")


BASELINE = {"vlpl": "em", "aevlp": "gr"}  # the same terms without pseudo-positives


def simulate(full, observed, precision, recall, seed):
    """A [N, C] 0/1 matrix of pseudo-positives: `recall` of the unknown true positives, and false ones drawn from
    the true negatives so that `precision` of all chosen are true (never an observed positive)."""
    rng = np.random.default_rng(seed)
    unknown_true = np.flatnonzero((full == 1) & (observed != 1))
    negatives = np.flatnonzero(full == 0)
    true_count = int(round(recall * unknown_true.size))
    false_count = min(int(round(true_count * (1 - precision) / precision)), negatives.size) if precision > 0 else 0
    chosen = np.zeros(full.size, np.float32)
    chosen[rng.choice(unknown_true, true_count, replace=False)] = 1
    chosen[rng.choice(negatives, false_count, replace=False)] = 1
    return chosen.reshape(full.shape)


def run_one(config, positives):
    import keras

    from spml_tf.training import trainer

    keras.backend.clear_session()
    started = time.time()
    results = trainer.train_and_evaluate(config, log=lambda line: None, verbose=0, positives=positives)
    return {"seed": config.seed, "test_map": results["test"]["map"], "val_map": results["val"]["map"],
            "best_epoch": results["best_epoch"], "seconds": round(time.time() - started, 1),
            "pseudo_positives": (results.get("vl_positives") or {}).get("pseudo_positives", 0),
            "measured_precision": (results.get("vl_positives") or {}).get("precision")}


def markdown(report):
    settings = report["settings"]
    header = " | ".join(f"P {p:g} / R {r:g}" for p, r in settings)
    lines = [f"| loss | baseline | {header} |", "|---|---|" + "---|" * len(settings)]
    for loss, entry in report["results"].items():
        cells = []
        for p, r in settings:
            found = entry["with"][f"{p:g}/{r:g}"]
            cells.append(f"{found['test_map']:.2f} ({found['test_map'] - entry['baseline']['test_map']:+.2f})")
        lines.append(f"| `{loss}` | {entry['baseline']['test_map']:.2f} ({entry['baseline_loss']}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), layout="constrained")
    for recall in sorted({r for _, r in report["settings"]}):
        precisions = sorted(p for p, r in report["settings"] if r == recall)
        for loss, entry in report["results"].items():
            gains = [entry["with"][f"{p:g}/{recall:g}"]["test_map"] - entry["baseline"]["test_map"]
                     for p in precisions]
            axes.plot(precisions, gains, marker="o", label=f"{loss} (recall {recall:g})")
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set(xlabel="precision of the pseudo-positives", ylabel="test mAP gain over the baseline (points)",
             title="digits: simulated CLIP pseudo-positives")
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)


def _mean(runs):
    return {"test_map": float(np.mean([run["test_map"] for run in runs])), "runs": runs}


def main(argv):
    del argv
    from spml_tf.data import datasets

    overrides = {name: getattr(FLAGS, name) for name in ("epochs", "warmup_epochs") if getattr(FLAGS, name)}
    base = config_lib.from_overrides("digits", data_dir=FLAGS.data_dir, **overrides)
    splits = datasets.load("digits", FLAGS.data_dir)
    labels = splits.labels("train")
    settings = [(float(p), float(r)) for r in FLAGS.recalls for p in FLAGS.precisions]
    workdir = tempfile.mkdtemp(prefix="spml_vl_quality_")
    results, baselines = {}, {}
    for loss in FLAGS.losses:
        baseline_loss = BASELINE.get(loss, loss)
        if baseline_loss not in baselines:
            runs = [run_one(dataclasses.replace(base, loss=baseline_loss, seed=seed,
                                                model_dir=os.path.join(workdir, f"{baseline_loss}-{seed}")), None)
                    for seed in range(1, FLAGS.seeds + 1)]
            baselines[baseline_loss] = _mean(runs)
            print(f"{baseline_loss:8s} no pseudo-positives: test mAP {baselines[baseline_loss]['test_map']:.2f}",
                  flush=True)
        entry = {"baseline_loss": baseline_loss, "baseline": baselines[baseline_loss], "with": {}}
        for precision, recall in settings:
            runs = []
            for seed in range(1, FLAGS.seeds + 1):
                positives = simulate(labels.full, labels.observed, precision, recall, seed)
                config = dataclasses.replace(base, loss=loss, seed=seed, model_dir=os.path.join(
                    workdir, f"{loss}-p{precision:g}-r{recall:g}-{seed}"))
                runs.append(run_one(config, positives))
            entry["with"][f"{precision:g}/{recall:g}"] = _mean(runs)
            gain = entry["with"][f"{precision:g}/{recall:g}"]["test_map"] - entry["baseline"]["test_map"]
            print(f"{loss:8s} precision {precision:g} recall {recall:g}: test mAP "
                  f"{entry['with'][f'{precision:g}/{recall:g}']['test_map']:.2f} ({gain:+.2f})", flush=True)
        results[loss] = entry
        table = write(results, settings, base)  # after every loss: a long run stopped early keeps what it measured
    print(table)
    print(f"Wrote {FLAGS.output} and the .md and .png beside it")


def write(results, settings, base):
    report = {"results": results, "settings": settings,
              "config": {"preset": dataclasses.asdict(base), "seeds": list(range(1, FLAGS.seeds + 1)),
                         "command": " ".join(["python", "bench/vl_quality.py"] + sys.argv[1:])}}
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=2)
    stem = os.path.splitext(FLAGS.output)[0]
    table = markdown(report)
    with open(stem + ".md", "w") as f:
        f.write(table)
    chart(report, stem + ".png")
    return table


if __name__ == "__main__":
    define_flags()
    app.run(main)
