"""Metrics and APL at COCO's size: our vectorised code against per-class / per-example loops like the original's.

    python bench/metrics_apl.py [--rows=65665] [--classes=80] [--repeats=3] [--output=bench/results/metrics_apl.json]

On a synthetic --rows x --classes label matrix (COCO's training size by
default; each row has 1-4 positives, 2.9 on average) with noisy float32
scores correlated with the labels (seed fixed), times:

  ours      `metrics.mean_average_precision` + `metrics.precision_recall_at_k`
            for k in 1, 3, 5, and one `pseudo_label.apl_round` (single-positive
            observed labels, theta 0.9, 10 epochs, warm-up 5);
  baseline  the same computed the original code's way: sklearn's
            `average_precision_score` class by class, P@k and R@k example by
            example (an argsort of each row), and APL class by class (the
            unannotated entries of the class, sorted, the lowest k set to -p
            one entry at a time, as the original's assignment loop does).

Before timing, both must agree: mAP to 1e-9, P@k and R@k and the APL matrix
exactly (the loops sort stably, as ours does, so tied scores order alike; the
original's default sort breaks ties arbitrarily). Reports the median of
--repeats runs of each part and whether ours stays under 1 s in total.
"""

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # pseudo_label imports Keras
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from spml_tf.methods import em as pseudo_label
from spml_tf.training import metrics  # noqa: E402

flags.DEFINE_integer("rows", 65665, "Examples (COCO 2014's training set: 65,665 after the 80/20 split).")
flags.DEFINE_integer("classes", 80, "Classes (COCO: 80).")
flags.DEFINE_integer("repeats", 3, "Timed runs of each part.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic labels and scores.")
flags.DEFINE_string("output", "bench/results/metrics_apl.json", "Where the JSON goes.")
FLAGS = flags.FLAGS

KS = (1, 3, 5)
POSITIVES_PER_ROW = (1, 2, 3, 4)
POSITIVES_PROBABILITY = (0.1, 0.25, 0.3, 0.35)  # 2.9 positives per row on average, as COCO
NEG_PROPORTION, NUM_EPOCHS, WARMUP_EPOCH = 0.9, 10, 5  # docs/method.md section 3 and COCO's preset
TARGET_SECONDS = 1.0


def make_problem(rows, classes, seed):
    """(full labels {0,1}, float32 scores, observed single-positive labels) with fixed seed."""
    rng = np.random.RandomState(seed)
    num_pos = rng.choice(POSITIVES_PER_ROW, size=rows, p=POSITIVES_PROBABILITY)
    # A random permutation of the classes per row; the first num_pos of it are the positives.
    rank = np.argsort(rng.rand(rows, classes), axis=1).argsort(axis=1)
    full = (rank < num_pos[:, None]).astype(np.float32)
    logits = 3.0 * full - 2.0 + rng.normal(0.0, 1.5, size=(rows, classes))
    # float32 like a model's output, so near-certain scores tie as they do in practice.
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    # One observed positive per row, drawn among the row's positives.
    chosen = np.argmax(np.where(full > 0, rng.rand(rows, classes), -1.0), axis=1)
    observed = np.zeros_like(full)
    observed[np.arange(rows), chosen] = 1.0
    return full, scores, observed


# --- ours ---------------------------------------------------------------------------------------------------------

def ours_precision_recall_at_k(full, scores):
    return [metrics.precision_recall_at_k(full, scores, k) for k in KS]


def ours_apl(observed, scores):
    initial_unannotated = (observed == 0).sum(axis=0)
    return pseudo_label.apl_round(observed, scores, initial_unannotated, NEG_PROPORTION, NUM_EPOCHS, WARMUP_EPOCH)


# --- the original's way -------------------------------------------------------------------------------------------

def loop_map(full, scores):
    """sklearn's average precision class by class; a class without positives counts 0 (the original's convention)."""
    from sklearn.metrics import average_precision_score

    aps = [average_precision_score(full[:, c], scores[:, c]) if full[:, c].any() else 0.0
           for c in range(full.shape[1])]
    return 100.0 * float(np.mean(aps))


def loop_precision_recall_at_k(full, scores, k):
    """P@k and R@k example by example: argsort the row, count the positives among its top k."""
    hits, recalls = [], []
    for truth, row in zip(full > 0, scores):
        top = np.argsort(-row, kind="stable")[:k]
        hit = int(truth[top].sum())
        hits.append(hit)
        if truth.any():
            recalls.append(hit / int(truth.sum()))
    # The same reduction as ours (a NumPy mean over examples), so the two agree to the bit.
    return 100.0 * float((np.array(hits) / k).mean()), 100.0 * float(np.mean(recalls))


def loop_precision_recall_at_ks(full, scores):
    return [loop_precision_recall_at_k(full, scores, k) for k in KS]


def loop_apl(observed, scores):
    """One APL round as the original PyTorch code runs it, restated in NumPy: a loop over classes, then entries."""
    out = observed.copy()
    initial_unannotated = (observed == 0).sum(axis=0)
    for c in range(observed.shape[1]):
        class_scores = scores[:, c]
        unannotated = np.flatnonzero(observed[:, c] == 0)
        count = int(NEG_PROPORTION * initial_unannotated[c] / (NUM_EPOCHS - WARMUP_EPOCH))
        lowest = np.argsort(class_scores[unannotated], kind="stable")[:count]
        for location in lowest:
            out[unannotated[location], c] = -class_scores[unannotated[location]]
    return out


# --- measuring ----------------------------------------------------------------------------------------------------

def parts(full, scores, observed):
    """{part: (ours, the original's way)}, each a function of nothing that computes that part."""
    return {
        "map": (lambda: metrics.mean_average_precision(full, scores), lambda: loop_map(full, scores)),
        "precision_recall_at_k": (lambda: ours_precision_recall_at_k(full, scores),
                                  lambda: loop_precision_recall_at_ks(full, scores)),
        "apl_round": (lambda: ours_apl(observed, scores), lambda: loop_apl(observed, scores)),
    }


def check_agreement(timed):
    """Ours and the loops give the same numbers, or SystemExit naming the difference."""
    (ours_map, loop_map_), (ours_at_k, loop_at_k), (ours_labels, loop_labels) = (
        (ours(), loop()) for ours, loop in timed.values())
    if abs(ours_map - loop_map_) > 1e-9:
        raise SystemExit(f"mAP differs: ours {ours_map!r}, sklearn loop {loop_map_!r}")
    if ours_at_k != loop_at_k:
        raise SystemExit(f"P@k/R@k for k={KS} differ: ours {ours_at_k}, loop {loop_at_k}")
    if not np.array_equal(ours_labels, loop_labels):
        raise SystemExit(f"APL rounds differ in {int((ours_labels != loop_labels).sum())} entries")
    return {"map": ours_map, "map_abs_difference": abs(ours_map - loop_map_),
            "precision_recall_at_k": {str(k): list(pair) for k, pair in zip(KS, ours_at_k)},
            "precision_recall_at_k_equal": True, "apl_equal": True,
            "apl_pseudo_negatives": int((ours_labels < 0).sum())}


def seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(timed, repeats):
    """{"ours"/"baseline": {part: [seconds of each run]}}, ours and the loops alternating within each repeat."""
    runs = {"ours": {name: [] for name in timed}, "baseline": {name: [] for name in timed}}
    for _ in range(repeats):
        for name, (ours, loop) in timed.items():
            runs["ours"][name].append(seconds(ours))
            runs["baseline"][name].append(seconds(loop))
    return runs


def summary(runs):
    """Median seconds of every part and of their total (the median of the per-repeat sums), with every run."""
    totals = [sum(each) for each in zip(*runs.values())]
    result = {f"{name}_seconds": round(statistics.median(times), 4) for name, times in runs.items()}
    result["total_seconds"] = round(statistics.median(totals), 4)
    result["runs"] = {name: [round(time_, 4) for time_ in times] for name, times in runs.items()}
    return result


def markdown(ours, baseline):
    lines = ["| part | ours (s) | original's way (s) | speed-up |", "|---|---|---|---|"]
    for key, name in (("map_seconds", "mAP"), ("precision_recall_at_k_seconds", f"P@k and R@k, k in {KS}"),
                      ("apl_round_seconds", "one APL round"), ("total_seconds", "total")):
        lines.append(f"| {name} | {ours[key]:.3f} | {baseline[key]:.3f} | {baseline[key] / ours[key]:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    load_at_start = round(os.getloadavg()[0], 2)  # other processes on the machine skew every rate
    for name in ("rows", "classes", "repeats"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be at least 1")
    if FLAGS.classes < max(POSITIVES_PER_ROW):
        raise app.UsageError(f"--classes={FLAGS.classes}: rows have up to {max(POSITIVES_PER_ROW)} positives")
    full, scores, observed = make_problem(FLAGS.rows, FLAGS.classes, FLAGS.seed)
    print(f"{FLAGS.rows:,} x {FLAGS.classes}, {full.sum(axis=1).mean():.2f} positives per row", flush=True)
    timed = parts(full, scores, observed)
    check = check_agreement(timed)
    print(f"ours and the loops agree: mAP {check['map']:.4f} (|difference| {check['map_abs_difference']:.1e}), "
          f"P@k and R@k exactly, the APL round exactly ({check['apl_pseudo_negatives']:,} pseudo-negatives)",
          flush=True)

    runs = measure(timed, FLAGS.repeats)
    ours, baseline = summary(runs["ours"]), summary(runs["baseline"])
    met = ours["total_seconds"] < TARGET_SECONDS
    report = {
        "what": "mean_average_precision + precision_recall_at_k (k=1,3,5) and one apl_round, vectorised (ours) "
                "against per-class sklearn AP, per-example P@k and the original's per-class/per-entry APL loops; "
                "median seconds over the repeats",
        "rows": FLAGS.rows, "classes": FLAGS.classes, "repeats": FLAGS.repeats, "seed": FLAGS.seed,
        "positives_per_row": round(float(full.sum(axis=1).mean()), 3),
        "apl": {"neg_proportion": NEG_PROPORTION, "num_epochs": NUM_EPOCHS, "warmup_epoch": WARMUP_EPOCH},
        "check": check,
        "ours": ours,
        "baseline": baseline,
        "speedup": round(baseline["total_seconds"] / ours["total_seconds"], 1),
        "target": {"seconds": TARGET_SECONDS, "measured": ours["total_seconds"], "met": met},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "load_average_at_start": load_at_start},
        "command": " ".join(["python", "bench/metrics_apl.py"] + sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=2)
    print(markdown(ours, baseline))
    if met:
        print(f"target met: ours {ours['total_seconds']:.3f} s < {TARGET_SECONDS:g} s")
    else:
        print(f"TARGET MISSED: ours {ours['total_seconds']:.3f} s, target < {TARGET_SECONDS:g} s")
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
