"""The progress of `fit` as a person reads it: in place on a terminal, plain lines in a log file.

Keras's progress bar redraws with backspaces and colour codes, so an epoch in a log file is one line of 13-22 KB.
`FitProgress` replaces it (fit runs with verbose=0):
  bar    one line per epoch, redrawn in place about five times a second (steps, loss, images/s, time left) and
         cleared at the epoch's end, where EpochSummary prints the epoch's line;
  lines  nothing but plain lines: within an epoch one every `every_steps` steps (default: about one a minute),
         each with the step, the loss so far, images/s and the epoch's time left;
  none   nothing (EpochSummary's line per epoch stays).
`auto` is bar on a terminal, lines otherwise.
"""

import sys
import time

import keras

from spml_tf.core.progress import clock

MODES = ("auto", "bar", "lines", "none")
LOG_SECONDS = 60.0  # lines mode without every_steps: about one line a minute
REDRAW_SECONDS = 0.2


def resolve(mode, stream=None):
    """bar or lines for `auto`, by whether `stream` (stdout) is a terminal."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = stream or sys.stdout
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


class FitProgress(keras.callbacks.Callback):
    """Steps done, the running loss, images/s and the time left of the current epoch (see the module's text)."""

    def __init__(self, mode, num_epochs, batch_size, every_steps=None, stream=None):
        super().__init__()
        self.mode = resolve(mode, stream)
        self.num_epochs, self.batch_size, self.every_steps = num_epochs, batch_size, every_steps
        self.stream = stream or sys.stdout
        self.epoch = 0
        self.start = self.last = 0.0
        self.drawn = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.start = self.last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.mode == "none":
            return
        step, now = batch + 1, time.monotonic()
        if self.mode == "bar":
            if now - self.last >= REDRAW_SECONDS:
                self._write("\r\033[K" + self.line(step, now, logs), flush=True)
                self.drawn, self.last = True, now
        elif self.every_steps and step % self.every_steps == 0 or not self.every_steps and now - self.last >= LOG_SECONDS:
            self._write(self.line(step, now, logs) + "\n", flush=True)
            self.last = now

    def on_epoch_end(self, epoch, logs=None):
        if self.drawn:  # the epoch's line (EpochSummary) takes the bar's place
            self._write("\r\033[K", flush=True)
            self.drawn = False

    def line(self, step, now, logs):
        """`epoch 3/10 step 120/250 (48%)  loss 0.4321  310 images/s  0:00:12 left in the epoch`."""
        steps = (self.params or {}).get("steps")
        elapsed = max(now - self.start, 1e-9)
        text = f"epoch {self.epoch + 1}/{self.num_epochs} step {step:,}"
        if steps:
            text += f"/{steps:,} ({100.0 * step / steps:.0f}%)"
        if logs and "loss" in logs:
            text += f"  loss {float(logs['loss']):.4f}"
        text += f"  {step * self.batch_size / elapsed:,.1f} images/s"
        if steps:
            text += f"  {clock((steps - step) * elapsed / step)} left in the epoch"
        return text

    def _write(self, text, flush):
        self.stream.write(text)
        if flush:
            self.stream.flush()
