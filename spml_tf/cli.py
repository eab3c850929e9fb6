"""What every command line here shares: a bad flag or bad data is one line on stderr and an exit code."""

import os
import sys
import traceback

from absl import app, flags

from spml_tf.core import stopping
from spml_tf.core.errors import DataError, TrainingError, UsageError


def program_name(default):
    """The name errors start with: the installed command's (`spml-train`, ...) when run as one, else `default`."""
    name = os.path.basename(sys.argv[0])
    return name if name.startswith("spml-") else default


def run_command(default_program, define_flags, run):
    """A command's main: its flags defined, then run() under main_for (one line per error, an exit code)."""
    define_flags()
    program = program_name(default_program)
    app.run(main_for(program, run), flags_parser=flags_parser(program))


def flags_parser(program):
    """absl's flag parser, but a bad flag is one line `<program>: error: ...` and exit code 2."""

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            print(f"{program}: error: {error}", file=sys.stderr)
            sys.exit(2)

    return parse


def main_for(program, run):
    """An absl `main` that calls run() and turns UsageError / DataError / TrainingError into one line and
    exit 2 / 1 / 1, and a stop by signal (stopping.Stopped) or Ctrl-C into one line and 128 + the signal; with a
    --verbose flag set, the traceback is printed too."""

    def main(argv):
        # Progress lines reach a log file or a pipe as they are printed, not when a buffer fills.
        sys.stdout.reconfigure(line_buffering=True)
        if len(argv) > 1:
            print(f"{program}: error: unexpected arguments {argv[1:]}; flags take the form --name=value",
                  file=sys.stderr)
            sys.exit(2)
        try:
            run()
        except (UsageError, DataError, TrainingError) as error:
            _report(program, f"error: {error}")
            stopping.exit(error.exit_code)
        except stopping.Stopped as stop:
            _report(program, f"{stop}; {stopping.RESUME_HINT}")
            stopping.exit(stop.exit_code)
        except KeyboardInterrupt:
            _report(program, f"interrupted; {stopping.RESUME_HINT}")
            stopping.exit(130)

    return main


def _report(program, message):
    if "verbose" in flags.FLAGS and flags.FLAGS.verbose:
        traceback.print_exc()
    print(f"{program}: {message}", file=sys.stderr, flush=True)
