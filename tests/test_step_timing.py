"""bench/step_timing.py: windows of steps between batch ends, the CPU the rest of the machine took, busy windows,
the alternating order of bench/train_step.py's processes. Fake clocks and CPU readings, checked against the
arithmetic written out here."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import step_timing  # noqa: E402


def test_machine_cpu_reads_busy_and_steal_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    #               user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  1000 20 300 9000 50 7 3 40 0 0\ncpu0 500 10 150 4500 25 3 1 20 0 0\n")
    busy, steal = step_timing.machine_cpu(str(stat))
    ticks = step_timing.CLOCK_TICKS
    assert busy == pytest.approx((1000 + 20 + 300 + 7 + 3) / ticks)  # idle and iowait are not busy, steal apart
    assert steal == pytest.approx(40 / ticks)


def test_machine_cpu_is_none_without_proc_stat(tmp_path):
    assert step_timing.machine_cpu(str(tmp_path / "absent")) is None
    (tmp_path / "garbled").write_text("cpu  a b c\n")
    assert step_timing.machine_cpu(str(tmp_path / "garbled")) is None


def marks(times, busy=None, steal=None, own=None, every=1):
    """Marks at steps every, 2*every, ...: wall times `times`, machine busy / steal / own CPU seconds likewise."""
    count = len(times)
    busy = busy or [0.0] * count
    steal = steal or [0.0] * count
    own = own or [0.0] * count
    return [((i + 1) * every, times[i], (busy[i], steal[i]), own[i]) for i in range(count)]


def test_windows_start_after_the_warmup_and_do_not_overlap():
    times = [0.0, 5.0, 6.0, 7.5, 9.0, 10.0, 12.0, 14.5, 15.5, 16.0]  # the ends of steps 1..10
    windows = step_timing.windows(marks(times), warmup=2, length=3)
    # From the end of step 2 (5.0) to the end of step 5 (9.0), then 5 -> 8 (14.5); steps 9, 10 make no window.
    assert [window["steps"] for window in windows] == [3, 3]
    assert [window["seconds"] for window in windows] == [pytest.approx(4.0), pytest.approx(5.5)]
    assert [window["seconds_per_step"] for window in windows] == [pytest.approx(4.0 / 3), pytest.approx(5.5 / 3)]


def test_a_mark_covering_several_steps_ends_the_window_at_or_after_its_length():
    # steps_per_execution=4: batch ends after steps 4, 8, 12, 16 only.
    windows = step_timing.windows(marks([1.0, 2.0, 3.0, 4.5], every=4), warmup=3, length=5)
    # starts at the first mark with 3 steps done (step 4), ends at the first 5 or more steps later (step 12)
    [window] = windows
    assert window["steps"] == 8 and window["seconds_per_step"] == pytest.approx((3.0 - 1.0) / 8)


def test_warmup_zero_starts_at_the_first_mark():
    windows = step_timing.windows(marks([1.0, 3.0, 4.0]), warmup=0, length=1)
    assert [window["seconds"] for window in windows] == [pytest.approx(2.0), pytest.approx(1.0)]


def test_the_rest_of_the_machine_is_its_busy_time_less_ours_and_steal_is_apart():
    # 10 s window; the machine was busy 25 CPU seconds of which this process 19: 0.6 cores elsewhere; 1 s stolen.
    found = step_timing.windows(marks([0.0, 10.0], busy=[100.0, 125.0], steal=[7.0, 8.0], own=[50.0, 69.0]), 1, 1)
    [window] = found
    assert window["own_cores"] == pytest.approx(1.9)
    assert window["other_cores"] == pytest.approx(0.6)
    assert window["steal_cores"] == pytest.approx(0.1)
    # Tick rounding can make ours exceed the machine's count by a tick: never a negative load.
    [window] = step_timing.windows(marks([0.0, 10.0], busy=[100.0, 119.0], own=[50.0, 69.01]), 1, 1)
    assert window["other_cores"] == 0.0


def test_no_proc_stat_leaves_the_rest_unknown_and_the_window_counted():
    recorder = step_timing.StepRecorder(read_machine=lambda: None, read_own=iter([0.0, 1.0, 2.0]).__next__,
                                        clock=iter([0.0, 1.0, 2.0]).__next__)
    for step in (1, 2, 3):
        recorder.mark(step)
    windows = recorder.windows(warmup=1, length=1)
    assert [window["other_cores"] for window in windows] == [None, None]
    summary = step_timing.summarize(windows, busy_cores=0.25, images_per_step=8)
    assert summary["quiet_windows"] == 2 and summary["other_cores_median"] is None


def window(seconds_per_step, other, steal=0.0):
    return {"steps": 10, "seconds": 10 * seconds_per_step, "seconds_per_step": seconds_per_step, "own_cores": 1.9,
            "other_cores": other, "steal_cores": steal}


def test_busy_windows_are_left_out_of_the_median():
    windows = [window(1.0, 0.01), window(3.0, 0.9), window(1.2, 0.02), window(1.1, 0.2, steal=0.1)]
    summary = step_timing.summarize(windows, busy_cores=0.25, images_per_step=8)
    assert [w["busy"] for w in windows] == [False, True, False, True]  # 0.2 + 0.1 steal is over 0.25 too
    assert summary["seconds_per_step"] == pytest.approx(1.1)  # the median of 1.0 and 1.2, not of all four
    assert summary["images_per_second"] == pytest.approx(8 / 1.1)
    assert (summary["windows"], summary["quiet_windows"], summary["all_busy"]) == (4, 2, False)
    assert summary["other_cores_median"] == pytest.approx((0.02 + 0.3) / 2)  # of all four: 0.01, 0.02, 0.3, 0.9
    assert summary["other_cores_max"] == pytest.approx(0.9)


def test_when_every_window_is_busy_all_are_used_and_it_is_said():
    windows = [window(2.0, 0.5), window(4.0, 1.0), window(3.0, 0.7)]
    summary = step_timing.summarize(windows, busy_cores=0.25, images_per_step=4)
    assert summary["all_busy"] and summary["quiet_windows"] == 0 and summary["seconds_per_step"] == 3.0


def test_no_window_is_an_error_that_says_what_to_change():
    with pytest.raises(ValueError, match="more steps"):
        step_timing.summarize([], busy_cores=0.25, images_per_step=8)


def test_the_schedule_reverses_every_other_round_so_neighbours_alternate():
    order = step_timing.schedule(["fit", "torch", "jit"], rounds=3)
    assert order == [(0, "fit"), (0, "torch"), (0, "jit"), (1, "jit"), (1, "torch"), (1, "fit"),
                     (2, "fit"), (2, "torch"), (2, "jit")]
    # ours right before torch in one round, right after it in the next
    names = [name for _, name in order]
    assert names[0:2] == ["fit", "torch"] and names[4:6] == ["torch", "fit"]
