"""The progress line of long work (conversion): counts, percentage, rate, time left."""

import io

from spml_tf.core import progress


def test_a_log_gets_a_line_per_interval_and_a_final_line(monkeypatch):
    clock = iter([0.0, 5.0, 12.0, 20.0, 20.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()  # not a terminal: whole lines, every log_interval seconds
    bar = progress.Progress(100, "writing shards", stream=stream, log_interval=10.0)
    bar.update(10)  # t=5: too soon
    bar.update(30)  # t=12: 40 images in 12 s
    bar.update(60)  # t=20: too soon after the last line
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "writing shards: 40/100 (40%)  3 images/s  0:00:18 left",
        "writing shards: 100/100 (100%)  5 images/s  0:00:00 left",
    ]
