"""Training-step throughput: the trainer's real step, against the original code's PyTorch step on the same machine.

    python bench/train_step.py [--backbone=resnet50|keras_resnet50|small_cnn|hub:<preset>] [--image_size=224]
                               [--batch_size=8] [--warmup=3] [--steps=10] [--windows=3] [--rounds=3]
                               [--variants=fit,fit_bare,jit,spe4,bf16,shards] [--torch_python=<python with torch>]
                               [--busy_cores=0.25] [--output=bench/results/train_step.json]

What is timed is steps, not calls: inside one training loop, the wall time from the end of step `--warmup` to the
end of the step `--steps` later, `--windows` such windows one after the other (bench/step_timing.py). The loop's
start (tracing, first allocations) and its end (a `fit` call's teardown, which can wait for tf.data's autotune
thread: issue #27) fall outside every window. Beside each window goes the CPU the rest of the machine used
meanwhile (other processes, and the hypervisor's steal), in cores; a window where that exceeds --busy_cores is
flagged busy and left out of the medians while quiet windows exist.

Every measurement is a process of its own, and the processes alternate: each of --rounds rounds runs every variant
and the PyTorch step once, each round in the reverse order of the one before, with the PyTorch step next to `fit`
(fit, torch, fit_bare, ... then ..., fit_bare, torch, fit), so a drift of the machine's speed falls on both sides.
Both sides get the same threads: --intra_op_threads (default: the cores) inside one op, --inter_op_threads
(default: the cores) ops at once; TensorFlow through tf.config.threading, torch through set_num_threads /
set_num_interop_threads.

Ours is built as a run builds it (`train.build_trainer`: the model of --backbone without pretrained weights, the
label bank, the loss of --loss over it, the optimizer of the config, compiled) and trained with `model.fit` on
global batches of --batch_size, one device. --backbone=hub:<preset> takes any KerasHub image backbone as a run does
(spml_tf/nets/hub.py; random weights; bench/hub_presets.py writes local presets of the published geometries).
Variants:

  fit        data from memory (the same batch of random images, repeated), the per-step callbacks a run has
             (StopOnNaN reads every step's loss; the progress display, redrawn about five times a second)
  fit_bare   the same without callbacks: what the callbacks cost
  jit        fit with `jit_compile=True` (XLA)
  spe4       fit with Keras's steps_per_execution=4 (a batch end every four steps; figures are per step)
  bf16       fit under the mixed_bfloat16 policy
  shards     fit from TFRecord shards through the real input pipeline (`pipeline.make_train_dataset`; JPEGs
             stored at --image_size, so decode, flip, batch): input and compute together

The PyTorch step is the original code's (bench/torch_step.py: torchvision's resnet50 without weights in train mode,
its EM loss, torch.optim.Adam, the loss read every step). It runs under --torch_python (default: this Python), so
torch never needs to be in the project's environment; without torch the row says why it is missing.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from bench import step_timing  # noqa: E402

VARIANTS = ("fit", "fit_bare", "jit", "spe4", "bf16", "shards")
TORCH = "torch"
NUM_CLASSES = 20

BACKBONES = ("resnet50", "keras_resnet50", "small_cnn")
HUB_PREFIX = "hub:"
FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined when it runs (bench/profile_step.py adds its own to these): importing this
    module, as the tests and profile_step do, defines nothing that could collide with another command's flags."""
    flags.DEFINE_string("backbone", "resnet50", f"The network: one of {', '.join(BACKBONES)}, or "
                        f"{HUB_PREFIX}<preset> (any KerasHub image backbone preset: a name, handle or local folder).")
    flags.DEFINE_integer("image_size", 224, "Square input size.")
    flags.DEFINE_integer("batch_size", 8, "Global batch.")
    flags.DEFINE_string("loss", "em", "Our loss (the torch step always runs the original EM).")
    flags.DEFINE_integer("warmup", 3, "Steps of each process before its first window (tracing, allocation).")
    flags.DEFINE_integer("steps", 10, "Steps per window.")
    flags.DEFINE_integer("windows", 3, "Windows per process, one after the other in one training loop.")
    flags.DEFINE_integer("rounds", 3, "Rounds: every variant and the torch step once each, alternating.")
    flags.DEFINE_list("variants", list(VARIANTS), f"Which of {', '.join(VARIANTS)}.")
    flags.DEFINE_integer("intra_op_threads", 0, "Threads inside one op, both sides (0: the cores).")
    flags.DEFINE_integer("inter_op_threads", 0, "Ops at once, both sides (0: the cores).")
    flags.DEFINE_float("busy_cores", 0.25, "A window where the rest of the machine used more CPU than this (cores, "
                       "steal included) is flagged busy and left out of the medians while quiet windows exist.")
    flags.DEFINE_boolean("torch", True, "Also time the original-style PyTorch step.")
    flags.DEFINE_string("torch_python", "", "A Python with torch, torchvision, numpy and absl-py (default: this one).")
    flags.DEFINE_integer("timeout", 1800, "Seconds one measuring process may take before it is stopped.")
    flags.DEFINE_string("child", "", "Internal: measure only this (a variant or torch) and print its JSON.")
    flags.DEFINE_string("output", "bench/results/train_step.json", "Where the JSON goes (a .md table beside it).")


def threads():
    return (FLAGS.intra_op_threads or os.cpu_count()), (FLAGS.inter_op_threads or os.cpu_count())


def total_steps(steps_per_execution=1):
    """Warm-up plus the windows, rounded up to whole executions."""
    total = FLAGS.warmup + FLAGS.windows * FLAGS.steps
    return -(-total // steps_per_execution) * steps_per_execution


def _random_labels(count, seed=0):
    rng = np.random.RandomState(seed)
    labels = np.zeros((count, NUM_CLASSES), np.float32)
    labels[np.arange(count), rng.randint(NUM_CLASSES, size=count)] = 1.0
    return labels


# --- Ours: one process per variant ------------------------------------------------------------------------------------


def _config(**overrides):
    from spml_tf import config as config_lib

    return config_lib.from_overrides("voc", backbone=FLAGS.backbone, weights="none", image_size=FLAGS.image_size,
                                     batch_size=FLAGS.batch_size, loss=FLAGS.loss, **overrides)


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


def shards_dataset(config, work):
    from bench.synthetic import make_jpegs, write_files, write_shards
    from spml_tf.data import pipeline

    size, count = config.image_size, max(64, 4 * config.batch_size)
    jpegs = make_jpegs(count, size, size)
    manifest = write_shards(os.path.join(work, "shards"), write_files(os.path.join(work, "files"), jpegs),
                            NUM_CLASSES, shard_size_mb=8)
    return pipeline.make_train_dataset(manifest, size, config.batch_size, random_flip=True, seed=0, epochs=1000), count


def run_callbacks():
    """The per-step callbacks of a run (trainer.make_callbacks): StopOnNaN and the progress display (here drawn into
    a buffer); the others act at epoch ends, outside the windows."""
    import io

    from spml_tf.training import checkpoint, fit_progress

    return [checkpoint.StopOnNaN(tempfile.gettempdir()),
            fit_progress.FitProgress("bar", 1, FLAGS.batch_size, stream=io.StringIO())]


def _recording_callback(recorder):
    """Marks the recorder at every batch end, in fit's own loop (not async_safe: Keras calls it right after the
    step's results exist, before the next step starts)."""
    import keras

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            recorder.mark(batch + 1)  # Keras passes the last step of the execution: batch + 1 steps are done

    return Record()


def prepare_tensorflow(variant):
    """The threads, precision policy and seed of a measuring process (before TensorFlow runs anything), and the
    config of `variant` (jit: XLA; bf16: mixed_bfloat16). bench/profile_step.py prepares its process so too."""
    import keras
    import tensorflow as tf

    intra, inter = threads()
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    if variant == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    return _config(jit_compile=variant == "jit")


def measure_ours(variant):
    import keras
    import tensorflow as tf

    config = prepare_tensorflow(variant)
    with tempfile.TemporaryDirectory(prefix="spml_train_step_") as work:
        dataset, num_examples = shards_dataset(config, work) if variant == "shards" else memory_dataset(config)
        trainer = build(config, num_examples)
        model = trainer.training_model
        steps_per_execution = 4 if variant == "spe4" else 1
        if steps_per_execution != 1:
            model.compile(optimizer=model.optimizer, loss=model.loss, steps_per_execution=steps_per_execution,
                          jit_compile=model.jit_compile)
        recorder = step_timing.StepRecorder()
        callbacks = [] if variant == "fit_bare" else run_callbacks()
        model.fit(dataset, epochs=1, steps_per_epoch=total_steps(steps_per_execution), verbose=0, shuffle=False,
                  callbacks=callbacks + [_recording_callback(recorder)])
    params = trainer.model.count_params()
    head = sum(layer.count_params() for layer in trainer.model.layers if layer.name == "logits")
    return {"windows": recorder.windows(FLAGS.warmup, FLAGS.steps), "params": params, "backbone_params": params - head,
            "version": f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
            "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}}


# --- The original code's step, in a process of its own ----------------------------------------------------------------


def measure_torch():
    """The original code's step (bench/torch_step.py), or {"skipped": reason} when torch / torchvision cannot be
    imported by this Python."""
    from bench import torch_step

    try:
        version = torch_step.versions()
    except ImportError as error:
        return {"skipped": f"torch / torchvision not importable by {sys.executable} ({error}); install them there, "
                           "or pass --torch_python"}
    step = torch_step.OriginalStep(FLAGS.batch_size, FLAGS.image_size, _random_labels(FLAGS.batch_size), *threads())
    recorder = step_timing.StepRecorder()
    for done in range(1, total_steps() + 1):
        step.run()
        recorder.mark(done)
    params, backbone_params = step.params()
    return {"windows": recorder.windows(FLAGS.warmup, FLAGS.steps), "params": params,
            "backbone_params": backbone_params, "version": version, "threads": step.threads()}


# --- The parent: alternating processes, then the summary --------------------------------------------------------------


def order_of_names():
    """The variants, with the torch step right after `fit` (first when fit is not measured)."""
    names = list(FLAGS.variants)
    if FLAGS.torch and FLAGS.backbone in ("resnet50", "keras_resnet50"):
        names.insert(names.index("fit") + 1 if "fit" in names else 0, TORCH)
    return names


def torch_counterpart_missing():
    if not FLAGS.torch:
        return "--notorch"
    if FLAGS.backbone == "small_cnn":
        return "no torch counterpart of small_cnn"
    if FLAGS.backbone.startswith(HUB_PREFIX):
        return f"no torch counterpart of {FLAGS.backbone} (the torch step is torchvision's resnet50)"
    return None


def fail(message):
    """A measuring process that could not be run or failed: one line, exit 1 (not a usage error)."""
    print(f"bench/train_step.py: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run_script(name, script, first_flag, passed):
    """Runs `script` in a process of its own (under --torch_python for the torch side) with `first_flag` and this
    process's values of the flags named in `passed`; its JSON, the last line of its stdout. Exits with one line
    when it cannot start, fails or outlasts --timeout. bench/profile_step.py runs its sides with it too."""
    python = (FLAGS.torch_python or sys.executable) if name == TORCH else sys.executable
    command = [python, script, first_flag] + [f"--{key}={FLAGS[key].value}" for key in passed]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=FLAGS.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        fail(f"the {name} process took over --timeout={FLAGS.timeout} s and was stopped")
    except OSError as error:
        fail(f"cannot start {python} for the {name} process: {error}")
    if child.returncode != 0:
        fail(f"the {name} process failed (exit {child.returncode}): {child.stderr.strip()[-1500:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_child(name):
    """One measuring process: its JSON, with the load averages around it."""
    passed = ["backbone", "image_size", "batch_size", "loss", "warmup", "steps", "windows", "intra_op_threads",
              "inter_op_threads"]
    load_before = os.getloadavg()
    started = time.monotonic()
    result = run_script(name, os.path.abspath(__file__), f"--child={name}", passed)
    result.update(name=name, process_seconds=time.monotonic() - started,
                  load_average={"before": list(load_before), "after": list(os.getloadavg())})
    return result


def _window_line(windows):
    parts = []
    for window in windows:
        other = ("" if window["other_cores"] is None
                 else f" (rest {window['other_cores'] + window['steal_cores']:.2f} cores)")
        parts.append(f"{window['seconds_per_step']:.3f}{other}")
    return ", ".join(parts)


def summarise(processes, names, images_per_step):
    """Per name: the windows of every round pooled, and the median per round (for the paired ratios)."""
    rows = {}
    for name in names:
        mine = [process for process in processes if process["name"] == name]
        if not mine:
            continue
        pooled = [window for process in mine for window in process["windows"]]
        row = step_timing.summarize(pooled, FLAGS.busy_cores, images_per_step)
        row["per_round"] = [step_timing.summarize(process["windows"], FLAGS.busy_cores, images_per_step)
                            ["images_per_second"] for process in mine]
        row.update(version=mine[0]["version"], threads=mine[0]["threads"], params=mine[0]["params"],
                   backbone_params=mine[0]["backbone_params"])
        rows[name] = row
    if TORCH in rows:
        base = rows[TORCH]
        for name, row in rows.items():
            row["ours_over_torch"] = row["images_per_second"] / base["images_per_second"]
            row["ours_over_torch_per_round"] = [mine / theirs for mine, theirs in zip(row["per_round"],
                                                                                     base["per_round"])]
    return rows


DESCRIPTIONS = {
    "fit": "model.fit, images in memory, a run's per-step callbacks",
    "fit_bare": "the same without callbacks",
    "jit": "`fit` + `jit_compile` (XLA)",
    "spe4": "`fit` + `steps_per_execution=4`",
    "bf16": "`fit` + `mixed_bfloat16`",
    "shards": "`fit` from TFRecord shards through the real pipeline",
    TORCH: "the original code's step",
}


def markdown(rows, torch_reason):
    lines = ["| variant | images/s | seconds per step | per round (images/s) | quiet windows | rest of the machine, "
             "cores (median / max) | ours / torch (per round) |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        label = f"`{name}`: {DESCRIPTIONS[name]}" if name != TORCH else f"{DESCRIPTIONS[name]} ({row['version']})"
        rounds = ", ".join(f"{rate:.2f}" for rate in row["per_round"])
        quiet = f"{row['quiet_windows']} of {row['windows']}" + (" (all busy: every window used)"
                                                                  if row["all_busy"] else "")
        rest = ("not measured" if row["other_cores_median"] is None
                else f"{row['other_cores_median']:.2f} / {row['other_cores_max']:.2f}")
        ratio = ""
        if "ours_over_torch" in row:
            ratio = (f"{row['ours_over_torch']:.2f} ("
                     + ", ".join(f"{value:.2f}" for value in row["ours_over_torch_per_round"]) + ")")
        lines.append(f"| {label} | {row['images_per_second']:.2f} | {row['seconds_per_step']:.3f} | {rounds} "
                     f"| {quiet} | {rest} | {ratio} |")
    if TORCH not in rows:
        lines.append(f"| {DESCRIPTIONS[TORCH]} | skipped: {torch_reason or 'not measured yet'} | | | | | |")
    return "\n".join(lines) + "\n"


def check_flags():
    unknown = [variant for variant in FLAGS.variants if variant not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if FLAGS.backbone not in BACKBONES and not (FLAGS.backbone.startswith(HUB_PREFIX)
                                                and len(FLAGS.backbone) > len(HUB_PREFIX)):
        raise app.UsageError(f"--backbone={FLAGS.backbone!r}: one of {', '.join(BACKBONES)} or {HUB_PREFIX}<preset>")
    for name in ("warmup", "steps", "windows", "rounds", "batch_size", "image_size"):
        if FLAGS[name].value < (0 if name == "warmup" else 1):
            raise app.UsageError(f"--{name}={FLAGS[name].value}: must be at least {0 if name == 'warmup' else 1}")
    if FLAGS.child and FLAGS.child not in VARIANTS + (TORCH,):
        raise app.UsageError(f"--child={FLAGS.child!r}: a variant or {TORCH}")


def main(argv):
    del argv
    check_flags()
    if FLAGS.child:  # one measurement; its JSON is the last line of stdout
        result = measure_torch() if FLAGS.child == TORCH else measure_ours(FLAGS.child)
        print(json.dumps(result), flush=True)
        return
    torch_reason = torch_counterpart_missing()
    names = [name for name in order_of_names() if name != TORCH or torch_reason is None]
    plan = step_timing.schedule(names, FLAGS.rounds)
    print(f"{len(plan)} processes ({FLAGS.rounds} rounds of {', '.join(names)}), each {FLAGS.warmup} warm-up steps "
          f"then {FLAGS.windows} windows of {FLAGS.steps} steps; a window is busy when the rest of the machine used "
          f"over {FLAGS.busy_cores} cores", flush=True)
    processes = []
    for index, (round_index, name) in enumerate(plan):
        if name == TORCH and torch_reason is not None:
            continue
        result = run_child(name)
        if "skipped" in result:  # no torch there: said once, and not asked again
            torch_reason = result["skipped"]
            print(f"[{index + 1}/{len(plan)}] torch skipped: {torch_reason}", flush=True)
            continue
        result["round"] = round_index
        processes.append(result)
        summary = step_timing.summarize(result["windows"], FLAGS.busy_cores, FLAGS.batch_size)
        flagged = sum(window["busy"] for window in result["windows"])
        print(f"[{index + 1}/{len(plan)}] round {round_index + 1} {name:8s} {summary['images_per_second']:6.2f} "
              f"images/s ({result['process_seconds']:.0f} s); seconds per step by window: "
              f"{_window_line(result['windows'])}" + (f"; {flagged} busy" if flagged else ""), flush=True)
        # What is measured so far is written after every process: a stopped run keeps it (marked incomplete).
        write_report(processes, names, plan, torch_reason, complete=False)
    table = write_report(processes, names, plan, torch_reason, complete=True)
    print(table)
    print(f"Wrote {FLAGS.output}")


def write_report(processes, names, plan, torch_reason, complete):
    """The JSON and its table, each replaced whole (written beside, then renamed); the table is returned."""
    rows = summarise(processes, names, FLAGS.batch_size)
    intra, inter = threads()
    report = {
        "complete": complete,
        "results": rows,
        "torch_skipped": None if TORCH in rows else torch_reason,
        "processes": processes,
        "config": {
            "backbone": FLAGS.backbone, "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
            "loss": FLAGS.loss, "warmup": FLAGS.warmup, "steps": FLAGS.steps, "windows": FLAGS.windows,
            "rounds": FLAGS.rounds, "busy_cores": FLAGS.busy_cores, "order": [name for _, name in plan],
            "threads": {"intra_op": intra, "inter_op": inter},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": " ".join(["python", "bench/train_step.py"] + sys.argv[1:]),
        },
    }
    table = markdown(rows, torch_reason) + ("" if complete else f"\n(incomplete: {len(processes)} of {len(plan)} "
                                                                "processes measured)\n")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    for path, text in ((FLAGS.output, json.dumps(report, indent=2)), (os.path.splitext(FLAGS.output)[0] + ".md",
                                                                      table)):
        with open(path + ".partial", "w") as f:
            f.write(text)
        os.replace(path + ".partial", path)
    return table


if __name__ == "__main__":
    define_flags()
    app.run(main)
