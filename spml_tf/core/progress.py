"""A progress line for long work: done/total, rate and time left, refreshed about once a second."""

import sys
import time


class Progress:
    """Counts work done and prints `label: 1,200/5,717 (21%)  340 images/s  0:00:13 left`.

    On a terminal the line is redrawn in place every second; in a log file a
    line is written every `log_interval` seconds, so logs stay readable.
    """

    def __init__(self, total, label, unit="images", stream=None, log_interval=10.0):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.interactive = getattr(self.stream, "isatty", lambda: False)()
        self.interval = 1.0 if self.interactive else log_interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, count):
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now, end="\r" if self.interactive else "\n")

    def close(self):
        self._print(time.monotonic(), end="\n")

    def line(self, now):
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        percent = 100.0 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.label}: {self.done:,}/{self.total:,} ({percent:.0f}%)  {rate:,.0f} {self.unit}/s  "
                f"{clock(left)} left")

    def _print(self, now, end):
        self.stream.write(self.line(now) + end)
        self.stream.flush()


def clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
