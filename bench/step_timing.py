"""Step timing on a shared machine: windows of N steps between two batch ends, and how much CPU the rest of the
machine took meanwhile. No TensorFlow or torch here: bench/train_step.py's processes (ours and the PyTorch one) both
record with `StepRecorder`, and its parent summarises with `summarize`.

A window is the wall time from the end of one step to the end of the step N later, inside one training loop: the
loop's start (tracing, the first allocations) and its end (a `fit` call's teardown, which can wait for tf.data's
autotune thread: issue #27) are outside every window. Beside each window goes the CPU the machine spent that was not
this process's (Linux /proc/stat's busy time less this process's own user + system time) and the time the hypervisor
took for other guests (steal), both in cores (CPU seconds per wall second). A window whose other + steal exceeds
`busy_cores` is flagged busy and left out of the medians while a quiet window exists.
"""

import os
import statistics
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC_STAT = "/proc/stat"
BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (idle 3, iowait 4 are not busy; steal 7 apart)
STEAL_FIELD = 7


def machine_cpu(path=PROC_STAT):
    """(busy seconds, steal seconds) of every CPU since boot, or None where there is no /proc/stat (not Linux)."""
    try:
        with open(path) as f:
            fields = [int(value) for value in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[STEAL_FIELD] if len(fields) > STEAL_FIELD else 0
    return sum(fields[i] for i in BUSY_FIELDS if i < len(fields)) / CLOCK_TICKS, steal / CLOCK_TICKS


def own_cpu():
    """This process's user + system CPU seconds, every thread included."""
    times = os.times()
    return times.user + times.system


class StepRecorder:
    """Records (steps done, wall, machine busy, steal, own CPU) at step ends; `windows` cuts them into windows."""

    def __init__(self, read_machine=machine_cpu, read_own=own_cpu, clock=time.perf_counter):
        self.read_machine, self.read_own, self.clock = read_machine, read_own, clock
        self.marks = []

    def mark(self, steps_done):
        machine = self.read_machine()
        self.marks.append((steps_done, self.clock(), machine, self.read_own()))

    def windows(self, warmup, length):
        return windows(self.marks, warmup, length)


def windows(marks, warmup, length):
    """Consecutive windows of at least `length` steps, the first starting at the first mark with `warmup` steps
    done. A mark may cover several steps (steps_per_execution): a window ends at the first mark `length` or more
    steps after its start, and its figures are per step."""
    result, start = [], None
    for mark in marks:
        if start is None:
            if mark[0] >= warmup:
                start = mark
            continue
        if mark[0] - start[0] >= length:
            result.append(_window(start, mark))
            start = mark
    return result


def _window(start, end):
    steps, seconds = end[0] - start[0], end[1] - start[1]
    own = end[3] - start[3]
    window = {"steps": steps, "seconds": seconds, "seconds_per_step": seconds / steps,
              "own_cores": own / seconds, "other_cores": None, "steal_cores": None}
    if start[2] is not None and end[2] is not None:
        busy, steal = end[2][0] - start[2][0], end[2][1] - start[2][1]
        # Tick counts are read at 1/CLOCK_TICKS resolution: a small negative difference is rounding, not a result.
        window["other_cores"] = max(busy - own, 0.0) / seconds
        window["steal_cores"] = steal / seconds
    return window


def is_busy(window, busy_cores):
    """Whether the rest of the machine (other processes plus steal) took more than `busy_cores` in the window.
    Unknown (no /proc/stat) counts as quiet: nothing says otherwise, and the report says it was not measured."""
    if window["other_cores"] is None:
        return False
    return window["other_cores"] + window["steal_cores"] > busy_cores


def summarize(windows_, busy_cores, images_per_step):
    """The median over the quiet windows (over every window, flagged, when none is quiet)."""
    if not windows_:
        raise ValueError("no window to summarise: more steps are needed after the warm-up")
    for window in windows_:
        window["busy"] = is_busy(window, busy_cores)
    quiet = [window for window in windows_ if not window["busy"]]
    used = quiet or windows_
    step = statistics.median(window["seconds_per_step"] for window in used)
    others = [window["other_cores"] + window["steal_cores"] for window in windows_ if window["other_cores"] is not None]
    return {
        "seconds_per_step": step,
        "images_per_second": images_per_step / step,
        "windows": len(windows_),
        "quiet_windows": len(quiet),
        "all_busy": not quiet,
        "other_cores_median": statistics.median(others) if others else None,
        "other_cores_max": max(others) if others else None,
    }


def schedule(names, rounds):
    """The order of the processes: every name once per round, each round the previous one reversed, so that names
    next to each other (ours and torch) alternate and a drift of the machine's speed falls on both alike."""
    order = []
    for round_index in range(rounds):
        names_of_round = list(names) if round_index % 2 == 0 else list(reversed(names))
        order.extend((round_index, name) for name in names_of_round)
    return order
