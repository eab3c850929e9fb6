"""What the frozen-CLIP scoring pass of `spml-vl-scores` costs per image on this machine, with the real encoders.

    python bench/vl_scores_cost.py [--models=vit_b16_224,vit_l14_336] [--batch_size=8,17] [--repeats=3]
                                   [--output=bench/results/vl_scores_cost.json]

Each model is KerasHub's CLIPVisionEncoder built with the architecture of a CLIP preset and random weights (no
pretrained weights can be downloaded here; random weights cost the same compute):
  vit_b16_224  ViT-B/16 at 224 (clip_vit_base_patch16), AEVLP's model: 1 + 4x4 = 17 views per image (CUB 1 + 5x5 = 26)
  vit_l14_336  ViT-L/14 at 336 (clip_vit_large_patch14_336), VLPL's model: 1 view per image
`encoder(images, training=False)` runs inside a tf.function on a batch of random float images of the model's size;
after one untimed warm-up call, --repeats calls are timed (wall clock, to the result's .numpy()) and the median seconds
per view (= per call / batch) is reported. A batch with a timed call slower than --max_batch_seconds is abandoned for
batch --fallback_batch. Images/s and the hours to score each dataset's train split are derived from the best median
seconds per view of each model. GFLOPs per view are analytic; the GPU hours are an extrapolation at an assumed
sustained throughput, not a measurement. Not timed: JPEG decoding, the resizing of the views, the pooler and
projection (one D x E matmul per view), the text prompts (once per run). os.getloadavg() and the cores this process
used (its CPU seconds / wall seconds) are recorded for each call: the machine may be busy with other work.
"""

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

# name: (preset it mirrors, patch, hidden D, layers L, heads, intermediate F, image side, default batch sizes)
MODELS = {
    "vit_b16_224": ("clip_vit_base_patch16", 16, 768, 12, 12, 3072, 224, (8, 17)),
    "vit_l14_336": ("clip_vit_large_patch14_336", 14, 1024, 24, 16, 4096, 336, (8,)),
}
# train split sizes; NUS-WIDE's is approximate (the usable images vary with what is still downloadable)
DATASETS = {"voc": 5_717, "coco": 82_081, "nuswide": 150_000, "cub": 5_994}
APPROXIMATE = {"nuswide"}
# the paper settings: which model scores how many views per image
METHODS = {
    "aevlp": ("vit_b16_224", lambda dataset: 1 + (5 if dataset == "cub" else 4) ** 2),
    "vlpl": ("vit_l14_336", lambda dataset: 1),
}
GPU_TFLOPS = 50.0

flags.DEFINE_list("models", list(MODELS), f"Which of {', '.join(MODELS)}.")
flags.DEFINE_list("batch_size", None, "Views per call, for every model (default: 8 and 17 for ViT-B, 8 for ViT-L).")
flags.DEFINE_integer("repeats", 3, "Timed calls per batch size (median reported).")
flags.DEFINE_float("max_batch_seconds", 60.0, "A timed call slower than this switches to --fallback_batch.")
flags.DEFINE_integer("fallback_batch", 2, "The batch size used when a call exceeds --max_batch_seconds.")
flags.DEFINE_float("gpu_tflops", GPU_TFLOPS, "Assumed sustained GPU TFLOP/s for the (unmeasured) extrapolation.")
flags.DEFINE_string("output", os.path.join(ROOT, "bench", "results", "vl_scores_cost.json"),
                    "JSON output; a Markdown table goes next to it (.md).")
FLAGS = flags.FLAGS


def flops_per_view(patch, dim, layers, intermediate, side):
    """Analytic multiply-adds and FLOPs (2 per multiply-add) of one view through the encoder.

    N = (side / patch)^2 + 1 tokens (the CLS token included). Per layer: Q, K, V and output projections 4 N D^2,
    the MLP 2 N D F, attention scores Q K^T N^2 D and their weighted sum of V N^2 D. The patch embedding (a
    convolution without bias) adds (N - 1) * 3 patch^2 D. LayerNorms, softmax, quick_gelu, biases and the
    position embedding (elementwise, O(N D)) are left out.
    """
    tokens = (side // patch) ** 2 + 1
    per_layer = 4 * tokens * dim ** 2 + 2 * tokens * dim * intermediate + 2 * tokens ** 2 * dim
    macs = layers * per_layer + (tokens - 1) * 3 * patch ** 2 * dim
    return {"tokens": tokens, "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9,
            "gflops_per_layer": 2 * per_layer / 1e9}


def build(name):
    import keras_hub

    _, patch, dim, layers, heads, intermediate, side, _ = MODELS[name]
    encoder = keras_hub.models.CLIPVisionEncoder(
        patch_size=patch, hidden_dim=dim, num_layers=layers, num_heads=heads, intermediate_dim=intermediate,
        intermediate_activation="quick_gelu", image_shape=(side, side, 3), dtype="float32")
    encoder.trainable = False
    return encoder


def load():
    return [round(value, 2) for value in os.getloadavg()]


def time_batch(encoder, forward, side, batch, repeats, limit):
    """Warm-up plus `repeats` timed calls; stops after the first timed call if it exceeds `limit` seconds."""
    images = np.random.default_rng(0).uniform(0.0, 1.0, (batch, side, side, 3)).astype(np.float32)
    import tensorflow as tf

    images = tf.constant(images)
    row = {"batch": batch, "calls": []}
    start, before = time.perf_counter(), load()
    forward(images).numpy()
    row["warmup"] = {"seconds": round(time.perf_counter() - start, 3), "load_before": before, "load_after": load()}
    for _ in range(repeats):
        before = load()
        start, cpu = time.perf_counter(), time.process_time()
        forward(images).numpy()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        row["calls"].append({"seconds": round(seconds, 3), "cores_used": round(cpu / seconds, 2),
                             "load_before": before, "load_after": load()})
        print(f"    batch {batch}: {seconds:.2f} s ({seconds / batch:.3f} s/view), {cpu / seconds:.2f} cores, "
              f"load {before} -> {load()}", flush=True)
        if seconds > limit:
            row["abandoned"] = f"a call took {seconds:.1f} s > {limit:g} s"
            return row
    times = [call["seconds"] for call in row["calls"]]
    row["median_seconds"] = statistics.median(times)
    row["median_seconds_per_view"] = row["median_seconds"] / batch
    return row


def measure(name, batch_sizes, repeats, limit, fallback):
    import tensorflow as tf

    encoder = build(name)
    side = MODELS[name][6]

    @tf.function(reduce_retracing=True)
    def forward(images):
        return encoder({"images": images}, training=False)

    result = {"preset_architecture": MODELS[name][0], "params": int(encoder.count_params()),
              "image_side": side, "runs": []}
    print(f"{name}: {result['params'] / 1e6:.1f}M parameters", flush=True)
    for batch in batch_sizes:
        row = time_batch(encoder, forward, side, batch, repeats, limit)
        result["runs"].append(row)
        if "abandoned" in row and batch > fallback:
            print(f"    batch {batch} abandoned ({row['abandoned']}): batch {fallback}", flush=True)
            result["runs"].append(time_batch(encoder, forward, side, fallback, repeats, float("inf")))
            break
    timed = [row for row in result["runs"] if "median_seconds_per_view" in row]
    best = min(timed, key=lambda row: row["median_seconds_per_view"])
    result["seconds_per_view"] = best["median_seconds_per_view"]
    result["seconds_per_view_batch"] = best["batch"]
    return result


def derive(models, gpu_tflops):
    """Images/s and hours per dataset for each paper setting (and each model at 1, 17 and 26 views)."""
    settings = {}
    for method, (name, views_of) in METHODS.items():
        if name not in models:
            continue
        model = models[name]
        per_view, gflops = model["seconds_per_view"], model["flops"]["gflops"]
        rows = {}
        for dataset, count in DATASETS.items():
            views = views_of(dataset)
            rows[dataset] = {
                "images": count, "approximate": dataset in APPROXIMATE, "views": views,
                "cpu_images_per_second": 1.0 / (per_view * views),
                "cpu_hours": count * views * per_view / 3600,
                "gpu_hours_assumed": count * views * gflops / (gpu_tflops * 1e3) / 3600,
            }
        settings[method] = {"model": name, "datasets": rows}
    generic = {name: {str(views): {"cpu_images_per_second": 1.0 / (model["seconds_per_view"] * views)}
                      for views in (1, 17, 26)} for name, model in models.items()}
    return settings, generic


def markdown(report):
    lines = ["# `spml-vl-scores` cost per image (frozen CLIP vision encoder, random weights)", "",
             f"Machine: {report['machine']['platform']}, {report['machine']['cpu']}, "
             f"{report['machine']['cpu_count']} CPUs, TF {report['machine']['tensorflow']}, "
             f"Keras {report['machine']['keras']}, KerasHub {report['machine']['keras_hub']}. "
             f"Load average {report['load_start']} at start, {report['load_end']} at the end.", "",
             "| model | params | tokens N | GFLOPs/view | batch | median s/call | s/view | cores used | "
             "load (1 min) before -> after |", "|---|---|---|---|---|---|---|---|---|"]
    for name, model in report["models"].items():
        for row in model["runs"]:
            calls = row["calls"]
            loads = f"{calls[0]['load_before'][0]} -> {calls[-1]['load_after'][0]}" if calls else ""
            median = f"{row['median_seconds']:.2f}" if "median_seconds" in row else row.get("abandoned", "")
            per_view = f"{row['median_seconds_per_view']:.3f}" if "median_seconds_per_view" in row else ""
            cores = ", ".join(f"{call['cores_used']:.2f}" for call in calls)
            lines.append(f"| {name} | {model['params'] / 1e6:.1f}M | {model['flops']['tokens']} | "
                         f"{model['flops']['gflops']:.1f} | {row['batch']} | {median} | {per_view} | {cores} | "
                         f"{loads} |")
    lines += ["", f"| setting | dataset | images | views | CPU images/s | CPU hours (measured rate) | "
                  f"GPU hours at an assumed {report['gpu_tflops']:g} TFLOP/s (not measured) |",
              "|---|---|---|---|---|---|---|"]
    for method, setting in report["settings"].items():
        for dataset, row in setting["datasets"].items():
            images = f"~{row['images']:,}" if row["approximate"] else f"{row['images']:,}"
            lines.append(f"| {method} ({setting['model']}) | {dataset} | {images} | {row['views']} | "
                         f"{row['cpu_images_per_second']:.3f} | {row['cpu_hours']:.1f} | "
                         f"{row['gpu_hours_assumed']:.3f} |")
    lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    unknown = [name for name in FLAGS.models if name not in MODELS]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    import keras
    import keras_hub
    import tensorflow as tf

    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
              "load_start": load(), "gpu_tflops": FLAGS.gpu_tflops, "models": {}}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    report["machine"] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "keras_hub": keras_hub.__version__, "gpus": len(tf.config.list_physical_devices("GPU")),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (oneDNN on by default on x86)"),
    }
    started = time.perf_counter()
    for name in FLAGS.models:
        batches = [int(b) for b in FLAGS.batch_size] if FLAGS.batch_size else list(MODELS[name][7])
        result = measure(name, batches, FLAGS.repeats, FLAGS.max_batch_seconds, FLAGS.fallback_batch)
        _, patch, dim, layers, _, intermediate, side, _ = MODELS[name]
        result["flops"] = flops_per_view(patch, dim, layers, intermediate, side)
        result["cpu_gflops_per_second"] = result["flops"]["gflops"] / result["seconds_per_view"]
        report["models"][name] = result
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    report["load_end"] = load()
    report["settings"], report["images_per_second_by_views"] = derive(report["models"], FLAGS.gpu_tflops)
    report["notes"] = [
        "Timed while other work ran on this 2-core machine (a long benchmark in the background, about one core busy, "
        "at times a test run as well): the CPU numbers are what a contended machine gives, not a clean baseline. "
        "os.getloadavg() (which counts this script's own threads too) is recorded before and after each call, and "
        "cores_used = this process's CPU seconds / wall seconds of the call (2.0 would be the whole machine).",
        "Random weights (none can be downloaded here): the compute is the same as the pretrained presets'.",
        "Derived rates use each model's best median seconds per view over the batch sizes timed.",
        "Only the vision encoder is timed (float32, no XLA). Left out: JPEG decoding and the resizing of the views "
        "(tf.data, in parallel with the model in the real run), the pooler and projection, the text prompts.",
        "FLOPs formula (multiply-adds; FLOPs = 2 x MACs): N = (side/patch)^2 + 1 tokens incl. CLS; per layer "
        "4 N D^2 (Q, K, V, output) + 2 N D F (MLP) + 2 N^2 D (QK^T, AV); plus (N - 1) 3 patch^2 D for the patch "
        "embedding. With F = 4D the per-layer FLOPs are 24 N D^2 + 4 N^2 D.",
        f"GPU hours are an extrapolation at an assumed sustained {FLAGS.gpu_tflops:g} TFLOP/s (fp16, A100-class "
        "GPU), NOT measured; at that speed the JPEG decoding and resizing of the views would likely be the limit.",
        "the vlpl rows count the 1 view VLPL needs: spml-vl-scores --grid=0 (the whole image, no tiles); AEVLP "
        "scores 1 + grid^2 views (grid 4; 5 on CUB).",
        "NUS-WIDE's train split is taken as about 150,000 images (it varies with the images still available).",
    ]
    print()
    print(markdown(report))
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(os.path.splitext(FLAGS.output)[0] + ".md", "w") as f:
        f.write(markdown(report))
    print(f"wrote {FLAGS.output} and its .md ({report['seconds_total']} s)")


if __name__ == "__main__":
    app.run(main)
