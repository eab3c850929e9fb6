"""Where one training step's time goes: ours under TensorFlow's profiler beside the original code's PyTorch step
under torch.profiler, on the same machine with the same threads.

    python bench/profile_step.py [--profile_steps=5] [--torch_python=<python with torch>] [--backbone=resnet50]
                                 [--image_size=224] [--batch_size=8] [--output=bench/results/profile_step.json]

The network, data, loss, optimizer and threads are bench/train_step.py's (its flags apply: --backbone, --image_size,
--batch_size, --loss, --warmup, --intra_op_threads, --inter_op_threads, --torch_python, --timeout). Each side runs
in a process of its own: --warmup steps, then --profile_steps steps timed without a profiler (the step time), then
--profile_steps steps under the profiler (the op times; a profiler slows the step a little).

Ours: `model.fit` with a run's per-step callbacks; the profiler's trace (an XSpace, TensorFlow's own format) is read
here: every op execution on the host's threads, its self time (its duration less that of the events nested in it).
An op is in the backward pass when its name is under `gradient_tape/`, in the optimizer when under the optimizer's
name scope (`adam/`), else in the forward pass and loss. The original's step: torch.profiler's self CPU time per
aten op, and the three phases timed apart (forward and loss, backward, optimizer step).

Both are grouped into the same categories (convolution forward and backward, BatchNorm forward and backward, ReLU,
pooling, the classifier's matmul, the rest) in milliseconds per step. Op times are summed over threads: with two
inter-op threads, TensorFlow can run two ops at once, so a side's op sum may exceed its step time.
"""

import glob
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from bench import train_step  # noqa: E402  (its flags and builders: the network, sizes, threads, torch Python)

FLAGS = flags.FLAGS


def define_flags():
    """bench/train_step.py's flags and these, defined when the script runs (the tests import its functions)."""
    train_step.define_flags()
    flags.DEFINE_integer("profile_steps", 5, "Steps timed, then as many profiled, per side.")
    flags.DEFINE_enum("profile_variant", "fit", ["fit", "jit", "bf16"], "Our step as bench/train_step.py's `fit` "
                      "variant, with XLA (jit: XLA's own per-op events, --xla_cpu_enable_xprof_traceme), or "
                      "under mixed_bfloat16.")
    flags.DEFINE_string("profile_child", "", "Internal: profile only this side (ours or torch) and print its JSON.")
    flags.DEFINE_string("profile_output", "bench/results/profile_step.json", "Where the JSON goes (a .md beside it).")

# (category, pattern on TensorFlow's op type or torch's op name), first match wins.
CATEGORIES = (
    ("convolution backward", r"Conv2DBackprop|convolution_backward"),
    ("convolution forward", r"Conv2D|convolution|conv2d"),
    ("BatchNorm backward", r"FusedBatchNormGrad|batch_norm_backward"),
    ("BatchNorm forward", r"FusedBatchNorm|batch_norm"),
    ("ReLU forward and backward", r"Relu|relu|threshold_backward|clamp_min"),
    ("pooling forward and backward", r"MaxPool|AvgPool|max_pool|avg_pool"),
    ("classifier matmul", r"MatMul|addmm|\bmm\b|aten::mm"),
)
OTHER = "the rest (element-wise, optimizer updates, copies, bookkeeping)"


def category(op):
    for name, pattern in CATEGORIES:
        if re.search(pattern, op):
            return name
    return OTHER


def per_step(totals_us, steps):
    """{name: milliseconds per step}, largest first."""
    return dict(sorted(((name, us / 1000.0 / steps) for name, us in totals_us.items()), key=lambda item: -item[1]))


def by_category(ops_ms):
    totals = {}
    for op, ms in ops_ms.items():
        totals[category(op)] = totals.get(category(op), 0.0) + ms
    return totals


# --- Ours: TensorFlow's profiler, its XSpace read here ----------------------------------------------------------------


def self_times(xspace):
    """[(name, self microseconds)] of every event on the host plane's threads: its duration less its children's
    (events of one thread nest: an op inside a function call, a kernel inside an op)."""
    found = []
    for plane in xspace.planes:
        if not plane.name.startswith("/host:"):
            continue
        names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(line.events, key=lambda event: (event.offset_ps, -event.duration_ps))
            stack = []  # [end_ps, index into found]
            for event in events:
                start, end = event.offset_ps, event.offset_ps + event.duration_ps
                while stack and stack[-1][0] <= start:
                    stack.pop()
                if stack:  # nested: its time is not its parent's own
                    found[stack[-1][1]][1] -= event.duration_ps / 1e6
                found.append([names.get(event.metadata_id, "?"), event.duration_ps / 1e6])
                stack.append((end, len(found) - 1))
    return found


def op_intervals(xspace):
    """(start, end) in microseconds of every TensorFlow op event on the host's threads (op_and_phase)."""
    found = []
    for plane in xspace.planes:
        if plane.name.startswith("/host:"):
            names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
            found += [(event.offset_ps / 1e6, (event.offset_ps + event.duration_ps) / 1e6) for line in plane.lines
                      for event in line.events if op_and_phase(names.get(event.metadata_id, "")) is not None]
    return found


def union_length(intervals):
    """The time during which at least one of the intervals runs (ops of two threads at once count once)."""
    total, reached = 0.0, None
    for start, end in sorted(intervals):
        if reached is None or start > reached:
            total, reached = total + end - start, end
        elif end > reached:
            total, reached = total + end - reached, end
    return total


def op_and_phase(name):
    """TensorFlow's executor names an op's event `<op name>:<op type>`; None for what is not an op (function calls,
    the executor's own bookkeeping)."""
    if ":" not in name or "::" in name or name.startswith(("__inference", "__forward", "__backward")):
        return None
    op_name, op_type = name.rsplit(":", 1)
    if not op_type or " " in op_type:
        return None
    if op_name.startswith("gradient_tape/") or "/gradient_tape/" in op_name:
        return op_type, "backward"
    if re.search(r"(^|/)adam(_\d+)?/", op_name, re.IGNORECASE):
        return op_type, "optimizer"
    return op_type, "forward and loss"


def profile_ours():
    if FLAGS.profile_variant == "jit":  # XLA's compiled ops report to the profiler only when asked, before import
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    config = train_step.prepare_tensorflow(FLAGS.profile_variant)
    dataset, num_examples = train_step.memory_dataset(config)
    trainer = train_step.build(config, num_examples)
    warmup, steps = FLAGS.warmup, FLAGS.profile_steps
    ends, work = {}, tempfile.TemporaryDirectory(prefix="spml_profile_")
    logdir = work.name

    class Profile(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            done = batch + 1
            ends[done] = time.perf_counter()
            if done == warmup + steps:
                tf.profiler.experimental.start(logdir)
            elif done == warmup + 2 * steps:
                tf.profiler.experimental.stop()

    trainer.training_model.fit(dataset, epochs=1, steps_per_epoch=warmup + 2 * steps, verbose=0, shuffle=False,
                               callbacks=train_step.run_callbacks() + [Profile()])
    [path] = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    xspace = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        xspace.ParseFromString(f.read())
    work.cleanup()
    ops, phases, unnamed = {}, {}, {}
    for name, us in self_times(xspace):
        found = op_and_phase(name)
        if found is None:  # XLA's ops by kind: `transpose_copy_fusion.83` and `.89` are one row
            kind = re.sub(r"\.\d+$", "", name)
            unnamed[kind] = unnamed.get(kind, 0.0) + us
            continue
        op_type, phase = found
        ops[op_type] = ops.get(op_type, 0.0) + us
        phases[phase] = phases.get(phase, 0.0) + us
    # Two inter-op threads can run two ops at once: the op times' sum then exceeds the time any op ran.
    ops_running_ms = union_length(op_intervals(xspace)) / 1000.0 / steps
    return {"side": "ours", "version": f"TensorFlow {tf.__version__}, variant {FLAGS.profile_variant}",
            "ops_running_ms": ops_running_ms,
            "step_seconds": (ends[warmup + steps] - ends[warmup]) / steps,
            "profiled_step_seconds": (ends[warmup + 2 * steps] - ends[warmup + steps]) / steps,
            "ops_ms": per_step(ops, steps), "phases_ms": per_step(phases, steps),
            "not_ops_ms": dict(list(per_step(unnamed, steps).items())[:12])}


# --- The original's step: torch.profiler ------------------------------------------------------------------------------


def profile_torch():
    from bench import torch_step

    try:
        version = torch_step.versions()
    except ImportError as error:
        return {"skipped": f"torch / torchvision not importable by {sys.executable} ({error})"}
    import torch

    step = torch_step.OriginalStep(FLAGS.batch_size, FLAGS.image_size,
                                   train_step._random_labels(FLAGS.batch_size), *train_step.threads())
    for _ in range(FLAGS.warmup):
        step.run()
    phases, started = {}, time.perf_counter()
    for _ in range(FLAGS.profile_steps):
        step.run(phases)
    step_seconds = (time.perf_counter() - started) / FLAGS.profile_steps
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(FLAGS.profile_steps):
            step.run()
    profiled = (time.perf_counter() - started) / FLAGS.profile_steps
    ops = {event.key: event.self_cpu_time_total for event in profiler.key_averages()
           if event.self_cpu_time_total > 0}
    return {"side": "torch", "version": version, "step_seconds": step_seconds, "profiled_step_seconds": profiled,
            "ops_ms": per_step(ops, FLAGS.profile_steps),
            "phases_ms": per_step({name: seconds * 1e6 for name, seconds in phases.items()}, FLAGS.profile_steps)}


# --- The parent -------------------------------------------------------------------------------------------------------


def markdown(sides):
    lines = ["Step seconds (unprofiled / profiled): " + "; ".join(
        f"{side['side']} {side['step_seconds']:.3f} / {side['profiled_step_seconds']:.3f}" for side in sides), ""]
    # Under XLA nearly nothing is a TensorFlow op (its compiled ops are listed apart, below): no op tables for it.
    measured = [side for side in sides if sum(side["phases_ms"].values()) > 100.0 * side["step_seconds"]]
    for side in measured:
        if "ops_running_ms" in side:
            total = sum(side["ops_ms"].values())
            lines.extend([f"{side['side']}: {total:.1f} ms of op time per step, in {side['ops_running_ms']:.1f} ms of "
                          f"wall time during which at least one op ran ({total - side['ops_running_ms']:.1f} ms of "
                          "ops running beside another)", ""])

    def table(title, rows_of_side):
        pair = len(measured) == 2
        keys = []
        for rows in rows_of_side:
            keys += [key for key in rows if key not in keys]
        lines.extend([f"**{title}**", "",
                      "| | " + " | ".join(f"{side['side']}, ms per step" for side in measured)
                      + (" | ours - torch |" if pair else " |"),
                      "|---|" + "---|" * (len(measured) + pair)])
        for key in keys + ["total of op times"]:
            values = ([rows.get(key, 0.0) for rows in rows_of_side] if key in keys
                      else [sum(rows.values()) for rows in rows_of_side])
            difference = f" | {values[0] - values[1]:+.1f}" if pair else ""
            lines.append(f"| {key} | " + " | ".join(f"{value:.1f}" for value in values) + difference + " |")
        lines.append("")

    if measured:
        table("By phase", [side["phases_ms"] for side in measured])
        table("By category", [by_category(side["ops_ms"]) for side in measured])
    for side in measured:
        lines.extend([f"**Largest ops, {side['side']}** ({side['version']})", "", "| op | ms per step |", "|---|---|"])
        lines.extend(f"| `{op}` | {ms:.1f} |" for op, ms in list(side["ops_ms"].items())[:12])
        lines.append("")
    for side in sides:
        if side.get("not_ops_ms"):  # XLA's compiled ops by kind, function calls, the executor's own work
            lines.extend([f"**Largest events that are not TensorFlow ops, {side['side']}** ({side['version']})", "",
                          "| event | ms per step (self) |", "|---|---|"])
            lines.extend(f"| `{name[:80]}` | {ms:.1f} |" for name, ms in side["not_ops_ms"].items())
            lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.backbone not in ("resnet50", "keras_resnet50"):
        raise app.UsageError("--backbone: the comparison is torchvision's resnet50, so resnet50 or keras_resnet50")
    if FLAGS.profile_steps < 1:
        raise app.UsageError(f"--profile_steps={FLAGS.profile_steps}: must be at least 1")
    if FLAGS.profile_child:
        result = profile_torch() if FLAGS.profile_child == "torch" else profile_ours()
        print(json.dumps(result), flush=True)
        return
    sides = []
    if not FLAGS.torch:
        print("torch skipped: --notorch", flush=True)
    for side in ("ours", "torch") if FLAGS.torch else ("ours",):
        result = train_step.run_script(side, os.path.abspath(__file__), f"--profile_child={side}", [
            "backbone", "image_size", "batch_size", "loss", "warmup", "intra_op_threads", "inter_op_threads",
            "profile_steps", "profile_variant"])
        if "skipped" in result:
            print(f"{side} skipped: {result['skipped']}", flush=True)
            continue
        print(f"{side}: {result['step_seconds']:.3f} s per step ({result['profiled_step_seconds']:.3f} profiled)",
              flush=True)
        sides.append(result)
    text = markdown(sides)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.profile_output)), exist_ok=True)
    with open(FLAGS.profile_output, "w") as f:
        json.dump({"sides": sides, "config": {
            "backbone": FLAGS.backbone, "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
            "warmup": FLAGS.warmup, "profile_steps": FLAGS.profile_steps, "variant": FLAGS.profile_variant,
            "threads": dict(zip(("intra_op", "inter_op"), train_step.threads())),
            "command": " ".join(["python", "bench/profile_step.py"] + sys.argv[1:])}}, f, indent=2)
    with open(os.path.splitext(FLAGS.profile_output)[0] + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"Wrote {FLAGS.profile_output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
