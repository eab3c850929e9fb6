"""Quality benchmark: every SPML method trained by the same code on the embedded digits dataset.

    python bench/quality.py [--seeds=3] [--losses=full,an,...,ll_r+boostlu] [--output=FILE.json]

A method is a loss name, or `<loss>+boostlu` for the loss with the BoostLU head
(default: every loss with the linear head, then LL-R and EM+APL with BoostLU).

Protocol (the paper's): each run selects its epoch on VALIDATION mAP with full
labels and reports TEST mAP at that epoch; the test set is never used to
select anything. The learning rate of every method comes from the same small
search (`--lr_grid`, one run each with seed 0, chosen on validation mAP; a
single rate is used as it is, without a search); the reported runs then use
seeds 1..N. Writes the JSON to --output and a Markdown
table (.md) and a chart (.png) beside it.
"""

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from spml_tf import config as config_lib  # noqa: E402
from spml_tf import methods as losses  # noqa: E402

ALL_LOSSES = tuple(losses.LOSSES)
DEFAULT_METHODS = ALL_LOSSES + ("ll_r+boostlu", "em_apl+boostlu")

flags.DEFINE_integer("seeds", 3, "Seeds per method (1..N).")
flags.DEFINE_list("losses", list(DEFAULT_METHODS), "Methods to train: loss names, or <loss>+boostlu.")
flags.DEFINE_list("lr_grid", ["3e-4", "1e-3"], "Learning rates searched for every method (seed 0, val mAP).")
flags.DEFINE_string("output", "bench/results/quality.json", "Where the JSON goes (.md and .png beside it).")
flags.DEFINE_string("data_dir", "", "digits data directory (default: the cache).")
flags.DEFINE_integer("epochs", None, "Override the preset's epochs (for a quick check).")
flags.DEFINE_integer("warmup_epochs", None, "Override the preset's APL warm-up (for a quick check).")
FLAGS = flags.FLAGS


def run_one(config):
    """Trains one config quietly; returns the numbers the table needs."""
    import keras

    from spml_tf.training import trainer as train

    keras.backend.clear_session()
    started = time.time()
    results = train.train_and_evaluate(config, log=lambda line: None, verbose=0)
    rounds = results["apl_rounds"]
    return {
        "seed": config.seed,
        "learning_rate": config.learning_rate,
        "test_map": results["test"]["map"],
        "val_map": results["val"]["map"],
        "best_epoch": results["best_epoch"],
        "epochs_run": len(results["history"]),
        "apl_precision": rounds[-1].get("total_precision") if rounds else None,
        "seconds": round(time.time() - started, 1),
    }


def summarize(loss, runs, search):
    test = np.array([run["test_map"] for run in runs])
    apl = [run["apl_precision"] for run in runs if run["apl_precision"] is not None]
    return {
        "mean": float(test.mean()),
        "std": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
        "runs": runs,
        "learning_rate": runs[0]["learning_rate"],
        "lr_search": search,
        "apl_precision": float(np.mean(apl)) if apl else None,
    }


def markdown(results):
    lines = ["| method | test mAP (mean +- std) | runs | lr | APL pseudo-negative precision |",
             "|---|---|---|---|---|"]
    for loss, result in results.items():
        apl = f"{result['apl_precision']:.2f}%" if result["apl_precision"] is not None else ""
        runs = ", ".join(f"{run['test_map']:.2f}" for run in result["runs"])
        lines.append(f"| `{loss}` | {result['mean']:.2f} +- {result['std']:.2f} | {runs} | "
                     f"{result['learning_rate']:g} | {apl} |")
    return "\n".join(lines) + "\n"


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [results[name]["mean"] for name in names]
    stds = [results[name]["std"] for name in names]
    figure, axis = plt.subplots(figsize=(12, 4))
    axis.bar(names, means, yerr=stds, capsize=4, color=["#888" if n in ("full", "an") else "#4a7" for n in names])
    low = min(m - s for m, s in zip(means, stds))
    axis.set_ylim(max(0.0, low - 2.0), 100.5)
    axis.set_ylabel("test mAP (%)")
    axis.set_title("SPML methods on the embedded digits dataset (mean +- std over seeds)")
    axis.tick_params(axis="x", labelrotation=30)
    for x, (mean, std) in enumerate(zip(means, stds)):
        axis.text(x, min(mean + std + 0.2, 99.5), f"{mean:.1f}", ha="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def parse_method(method):
    """"em_apl" -> ("em_apl", "linear"); "ll_r+boostlu" -> ("ll_r", "boostlu"); None if not a method."""
    loss, _, head = method.partition("+")
    head = head or "linear"
    return (loss, head) if loss in ALL_LOSSES and head in config_lib.HEADS else None


def main(argv):
    del argv
    unknown = [method for method in FLAGS.losses if parse_method(method) is None]
    if unknown:
        raise app.UsageError(f"--losses: unknown {sorted(unknown)}; known: {', '.join(ALL_LOSSES)}, each also "
                             "as <loss>+boostlu")
    overrides = {name: getattr(FLAGS, name) for name in ("epochs", "warmup_epochs") if getattr(FLAGS, name)}
    workdir = tempfile.mkdtemp(prefix="spml_quality_")
    base = config_lib.from_overrides("digits", data_dir=FLAGS.data_dir, **overrides)
    results = {}
    for method in FLAGS.losses:
        loss, head = parse_method(method)
        search = {}
        for lr in FLAGS.lr_grid if len(FLAGS.lr_grid) > 1 else ():  # one rate: nothing to search
            config = dataclasses.replace(base, loss=loss, head=head, seed=0, learning_rate=float(lr),
                                         model_dir=os.path.join(workdir, f"{method}-lr{lr}"))
            search[lr] = run_one(config)
            print(f"{method:14s} search lr={lr}: val mAP {search[lr]['val_map']:.2f}", flush=True)
        best_lr = float(max(search, key=lambda lr: search[lr]["val_map"]) if search else FLAGS.lr_grid[0])
        runs = []
        for seed in range(1, FLAGS.seeds + 1):
            config = dataclasses.replace(base, loss=loss, head=head, seed=seed, learning_rate=best_lr,
                                         model_dir=os.path.join(workdir, f"{method}-seed{seed}"))
            runs.append(run_one(config))
            print(f"{method:14s} seed {seed}: test mAP {runs[-1]['test_map']:.2f} (best epoch "
                  f"{runs[-1]['best_epoch']}, {runs[-1]['seconds']:.0f} s)", flush=True)
        results[method] = summarize(method, runs, search)

    report = {
        "results": results,
        "config": {
            "dataset": "digits",
            "preset": dataclasses.asdict(base),
            "seeds": list(range(1, FLAGS.seeds + 1)),
            "lr_grid": [float(lr) for lr in FLAGS.lr_grid],
            "selection": "epoch by validation mAP (full labels); lr by validation mAP of seed 0",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": " ".join(["python", "bench/quality.py"] + sys.argv[1:]),
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=2)
    stem = os.path.splitext(FLAGS.output)[0]
    table = markdown(results)
    with open(stem + ".md", "w") as f:
        f.write(table)
    chart(results, stem + ".png")
    print(table)
    print(f"Wrote {FLAGS.output}, {stem}.md and {stem}.png")


if __name__ == "__main__":
    app.run(main)
