"""Training-step throughput: the trainer's real step, against the original code's PyTorch step on the same machine.

    python bench/train_step.py [--backbone=resnet50|keras_resnet50|small_cnn|hub:<preset>] [--image_size=224]
                               [--batch_size=8] [--steps=10]
                               [--variants=fit,fit_bare,jit,spe4,bf16,shards] [--output=bench/results/train_step.json]

Ours is built as a run builds it (`train.build_trainer`: the model of --backbone
without pretrained weights, the label bank, the loss of --loss over it, the
optimizer of the config, compiled) and trained with `model.fit` on global
batches of --batch_size, one device. --backbone=hub:<preset> takes any KerasHub
image backbone as a run does (spml_tf/nets/hub.py; random weights, as
--weights=none; bench/hub_presets.py writes local presets of the published
geometries). Variants:

  fit        data from memory (the same batch of random images, repeated), the
             per-step callbacks a run has (StopOnNaN and the progress bar)
  fit_bare   the same without callbacks: what the callbacks cost
  jit        fit with `jit_compile=True` (XLA)
  spe4       fit with Keras's steps_per_execution=4 (four steps per call)
  bf16       fit under the mixed_bfloat16 policy
  shards     fit from TFRecord shards through the real input pipeline
             (`pipeline.make_train_dataset`; JPEGs stored at --image_size, so
             decode, flip, batch): input and compute together

Each variant trains --warmup steps untimed (tracing, allocation), then
--steps timed steps in a second `fit` call, --repeats times; the median
images/s is reported. Whole-fit timing includes the end of each fit call, which
can wait for tf.data's autotune thread (10 ms, doubling: figures snap to 10.23 /
20.47 / 40.95 s, issue #27), so each row also has a per-step figure: a callback
records time.perf_counter() at every on_train_batch_end of the timed calls, and
`step_seconds_median` is the median batch-end-to-batch-end interval (steps 2..N
of each call, per step: spe4's four-step calls are divided by four), with
`images_per_second_from_steps` = --batch_size / it. os.getloadavg() is recorded
beside each variant (the machine may be shared). When torch and torchvision are importable, the
original code's step is timed in the same process the same way: torchvision's
resnet50 (no weights) in train mode, the original EM loss (losses.py of
Correr-Zhou/SPML-AckTheUnknown: -log(p + 1e-5) on positives, -alpha H(p) on
unannotated labels, mean over B x C), torch.optim.Adam, torch using every
core; each row then shows ours / torch. Without torch the row says so. torch is
never a dependency of this project.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from bench.synthetic import make_jpegs, write_files, write_shards  # noqa: E402

VARIANTS = ("fit", "fit_bare", "jit", "spe4", "bf16", "shards")
NUM_CLASSES = 20

BACKBONES = ("resnet50", "keras_resnet50", "small_cnn")
HUB_PREFIX = "hub:"
flags.DEFINE_string("backbone", "resnet50", f"The network: one of {', '.join(BACKBONES)}, or {HUB_PREFIX}<preset> "
                    "(any KerasHub image backbone preset: a name, handle or local directory).")
flags.DEFINE_integer("image_size", 224, "Square input size.")
flags.DEFINE_integer("batch_size", 8, "Global batch.")
flags.DEFINE_string("loss", "em", "Our loss (the torch step always runs the original EM).")
flags.DEFINE_integer("warmup", 3, "Untimed steps before each timing.")
flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 3, "Timings per variant (median reported).")
flags.DEFINE_list("variants", list(VARIANTS), f"Which of {', '.join(VARIANTS)}.")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow's threads inside one op (0: its default, the cores).")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow's ops run at once (0: its default).")
flags.DEFINE_boolean("torch", True, "Also time the original-style PyTorch step when torch is importable.")
flags.DEFINE_boolean("torch_child", False, "Internal: time only the PyTorch step and print its JSON (run in a "
                     "process of its own: torch and TensorFlow in one process can crash on import).")
flags.DEFINE_string("output", "bench/results/train_step.json", "Where the JSON goes (a .md table beside it).")
FLAGS = flags.FLAGS


def _config(**overrides):
    from spml_tf import config as config_lib

    return config_lib.from_overrides("voc", backbone=FLAGS.backbone, weights="none", image_size=FLAGS.image_size,
                                     batch_size=FLAGS.batch_size, loss=FLAGS.loss, **overrides)


def _random_labels(count, seed=0):
    rng = np.random.RandomState(seed)
    labels = np.zeros((count, NUM_CLASSES), np.float32)
    labels[np.arange(count), rng.randint(NUM_CLASSES, size=count)] = 1.0
    return labels


def build(config, num_examples):
    """The trainer exactly as train.build_trainer makes it, on one device."""
    import tensorflow as tf

    from spml_tf import methods as losses
    from spml_tf.training import trainer as train

    labels = _random_labels(num_examples)
    splits = types.SimpleNamespace(train=types.SimpleNamespace(num_classes=NUM_CLASSES))
    placement = types.SimpleNamespace(strategy=tf.distribute.get_strategy())
    return train.build_trainer(config, splits, types.SimpleNamespace(observed=labels, full=labels),
                               losses.for_config(config), placement, log=lambda line: None)


def memory_dataset(config):
    """One batch of random images in [0, 255] with example indices, repeated: no input cost."""
    import tensorflow as tf

    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (config.batch_size, config.image_size, config.image_size, 3)).astype(np.float32)
    indices = np.arange(config.batch_size, dtype=np.int64)
    return tf.data.Dataset.from_tensors((images, indices)).repeat().prefetch(2), config.batch_size


def _step_clock():
    """A callback recording (batch, time.perf_counter()) at each on_train_batch_end.

    async_safe: it adds no synchronisation of its own (the `fit` variant's StopOnNaN already makes Keras call
    batch-end callbacks in its loop; without other callbacks, as in fit_bare, Keras calls it from its dispatch
    thread, right after the step)."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.async_safe = True
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((batch, time.perf_counter()))

        def step_seconds(self):
            """Seconds per step between consecutive batch ends (the first step, which has no start here, left out)."""
            return [(now - then) / (batch - before)
                    for (before, then), (batch, now) in zip(self.ends, self.ends[1:]) if batch > before]

    return StepClock()


def time_fit(trainer, dataset, callbacks, steps_per_execution=1):
    """(median images/s, their list, per-step seconds) of --repeats timed fits of --steps steps, after --warmup
    untimed ones; per-step seconds are the batch-end-to-batch-end intervals of every timed fit."""
    import contextlib
    import io

    model = trainer.training_model
    if steps_per_execution != 1:
        model.compile(optimizer=model.optimizer, loss=model.loss, steps_per_execution=steps_per_execution,
                      jit_compile=model.jit_compile)
    quiet = io.StringIO()  # the progress bar's output
    with contextlib.redirect_stdout(quiet):
        model.fit(dataset, epochs=1, steps_per_epoch=max(FLAGS.warmup, steps_per_execution),
                  callbacks=callbacks(), verbose=0, shuffle=False)
        rates, step_seconds = [], []
        for _ in range(FLAGS.repeats):
            clock = _step_clock()
            started = time.perf_counter()
            model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.steps, callbacks=callbacks() + [clock], verbose=0,
                      shuffle=False)
            rates.append(FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - started))
            step_seconds.extend(clock.step_seconds())
    return statistics.median(rates), rates, step_seconds


def run_callbacks():
    """The per-step callbacks of a run: StopOnNaN reads the loss of every step; the progress bar prints it."""
    import keras

    from spml_tf.training import checkpoint

    return [checkpoint.StopOnNaN(tempfile.gettempdir()), keras.callbacks.ProgbarLogger()]


def measure_ours(variant, work):
    import keras

    from spml_tf.data import pipeline

    overrides = {"jit_compile": variant == "jit"}
    policy = keras.mixed_precision.global_policy()
    if variant == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        config = _config(**overrides)
        if variant == "shards":
            size = config.image_size
            count = max(64, 4 * config.batch_size)
            jpegs = make_jpegs(count, size, size)
            manifest = write_shards(os.path.join(work, "shards"), write_files(os.path.join(work, "files"), jpegs),
                                    NUM_CLASSES, shard_size_mb=8)
            dataset = pipeline.make_train_dataset(manifest, size, config.batch_size, random_flip=True, seed=0,
                                                  epochs=1000)
            num_examples = count
        else:
            dataset, num_examples = memory_dataset(config)
        trainer = build(config, num_examples)
        callbacks = (lambda: []) if variant == "fit_bare" else run_callbacks
        load_before = os.getloadavg()
        median, rates, step_seconds = time_fit(trainer, dataset, callbacks,
                                               steps_per_execution=4 if variant == "spe4" else 1)
        step_median = statistics.median(step_seconds) if step_seconds else None
        params = trainer.model.count_params()
        head = [layer.count_params() for layer in trainer.model.layers if layer.name == "logits"]
        return {"images_per_second": median, "repeats": rates,
                "step_seconds_median": step_median,
                "images_per_second_from_steps": config.batch_size / step_median if step_median else None,
                "step_seconds": step_seconds,
                "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
                "params": params, "backbone_params": params - sum(head)}
    finally:
        keras.mixed_precision.set_global_policy(policy)


def measure_torch():
    """The original code's step timed in a child process, or None with the reason it was not."""
    import subprocess

    if FLAGS.backbone == "small_cnn":
        return None, "no torch counterpart of small_cnn"
    if FLAGS.backbone.startswith(HUB_PREFIX):
        return None, f"no torch counterpart of {FLAGS.backbone} (the torch step is torchvision's resnet50)"
    command = [sys.executable, os.path.abspath(__file__), "--torch_child", f"--image_size={FLAGS.image_size}",
               f"--batch_size={FLAGS.batch_size}", f"--warmup={FLAGS.warmup}", f"--steps={FLAGS.steps}",
               f"--repeats={FLAGS.repeats}"]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        return None, f"the PyTorch process failed (exit {child.returncode}): {child.stderr.strip()[-300:]}"
    answer = json.loads(child.stdout.strip().splitlines()[-1])
    return answer["result"], answer["reason"]


def time_torch():
    """The original code's step, or None with the reason when torch / torchvision cannot be imported."""
    try:
        import torch
        import torchvision
    except ImportError as error:
        return None, f"torch / torchvision not importable ({error}); install them to compare"
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, NUM_CLASSES)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    images = torch.rand(FLAGS.batch_size, 3, FLAGS.image_size, FLAGS.image_size)
    labels = torch.from_numpy(_random_labels(FLAGS.batch_size))
    alpha = 0.2

    def em_loss(logits, label_vec):  # the original losses.py's loss_em, restated
        preds = torch.sigmoid(logits)
        loss_mtx = torch.zeros_like(preds)
        loss_mtx[label_vec == 1] = -torch.log(preds[label_vec == 1] + 1e-5)
        entropy = -(preds * torch.log(preds + 1e-5) + (1 - preds) * torch.log(1 - preds + 1e-5))
        loss_mtx[label_vec == 0] = -alpha * entropy[label_vec == 0]
        return loss_mtx.mean()

    def step():
        optimizer.zero_grad()
        loss = em_loss(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.item()  # the original loop reads the loss every step

    for _ in range(FLAGS.warmup):
        step()
    rates = []
    for _ in range(FLAGS.repeats):
        started = time.perf_counter()
        for _ in range(FLAGS.steps):
            step()
        rates.append(FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - started))
    version = f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads"
    return {"images_per_second": statistics.median(rates), "repeats": rates, "version": version}, None


DESCRIPTIONS = {
    "fit": "model.fit, data in memory, a run's per-step callbacks",
    "fit_bare": "model.fit, data in memory, no callbacks",
    "jit": "model.fit + jit_compile (XLA)",
    "spe4": "model.fit + steps_per_execution=4",
    "bf16": "model.fit + mixed_bfloat16",
    "shards": "model.fit from shards through the real pipeline",
}


def markdown(rows, torch_result, torch_reason):
    lines = ["| variant | images/s (median) | repeats | ours / torch | step seconds (median, batch end to batch end) "
             "| images/s from steps | load average (1 min, before / after) |", "|---|---|---|---|---|---|---|"]
    base = torch_result["images_per_second"] if torch_result else None
    for variant, row in rows.items():
        ratio = f"{row['images_per_second'] / base:.2f}" if base else ""
        repeats = ", ".join(f"{rate:.2f}" for rate in row["repeats"])
        step = f"{row['step_seconds_median']:.3f}" if row["step_seconds_median"] else "(too few steps)"
        step_rate = f"{row['images_per_second_from_steps']:.2f}" if row["images_per_second_from_steps"] else ""
        load = f"{row['load_average']['before'][0]:.2f} / {row['load_average']['after'][0]:.2f}"
        lines.append(f"| `{variant}`: {DESCRIPTIONS[variant]} | {row['images_per_second']:.2f} | {repeats} | {ratio} "
                     f"| {step} | {step_rate} | {load} |")
    if torch_result:
        repeats = ", ".join(f"{rate:.2f}" for rate in torch_result["repeats"])
        lines.append(f"| original code's step ({torch_result['version']}) | "
                     f"{torch_result['images_per_second']:.2f} | {repeats} | 1.00 | | | |")
    else:
        lines.append(f"| original code's step | skipped: {torch_reason} | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.torch_child:  # no TensorFlow in this process
        result, reason = time_torch()
        print(json.dumps({"result": result, "reason": reason}))
        return
    unknown = [variant for variant in FLAGS.variants if variant not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if FLAGS.backbone not in BACKBONES and not (FLAGS.backbone.startswith(HUB_PREFIX)
                                                and len(FLAGS.backbone) > len(HUB_PREFIX)):
        raise app.UsageError(f"--backbone={FLAGS.backbone!r}: one of {', '.join(BACKBONES)} or {HUB_PREFIX}<preset>")
    import tensorflow as tf

    if FLAGS.intra_op_threads:  # before TensorFlow runs anything
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="spml_train_step_") as work:
        for variant in FLAGS.variants:
            row = rows[variant] = measure_ours(variant, os.path.join(work, variant))
            step = (f", {row['step_seconds_median']:.3f} s/step median ({row['images_per_second_from_steps']:.2f} "
                    "images/s)" if row["step_seconds_median"] else "")
            print(f"{variant:9s} {row['images_per_second']:8.2f} images/s{step}, load average "
                  f"{row['load_average']['after'][0]:.2f}", flush=True)
    torch_result, torch_reason = measure_torch() if FLAGS.torch else (None, "--notorch")
    if torch_result:
        print(f"{'torch':9s} {torch_result['images_per_second']:8.2f} images/s", flush=True)
    table = markdown(rows, torch_result, torch_reason)
    report = {
        "ours": rows,
        "torch": torch_result,
        "torch_skipped": torch_reason,
        "config": {
            "backbone": FLAGS.backbone, "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
            "loss": FLAGS.loss, "warmup": FLAGS.warmup, "steps": FLAGS.steps, "repeats": FLAGS.repeats,
            "tensorflow": tf.__version__, "threads": {"inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                                                      "intra_op": tf.config.threading.get_intra_op_parallelism_threads()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": " ".join(["python", "bench/train_step.py"] + sys.argv[1:]),
            "load_average_at_end": list(os.getloadavg()),
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.splitext(FLAGS.output)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
