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


HELP_ARGUMENTS = ("-h", "-?", "--help", "-help", "--helpshort")


def verbose_asked(argv):
    """--verbose on the command line (read before the flags are parsed: TensorFlow's log is filtered from the
    start unless it is given)."""
    return any(argument in ("--verbose", "-verbose", "--verbose=true", "--verbose=1", "--verbose=True")
               for argument in argv[1:])


def run_command(default_program, define_flags, run):
    """A command's main: TensorFlow's log filtered, its flags defined, then run() under main_for (one line per
    error, an exit code)."""
    from spml_tf.core import quiet

    program = program_name(default_program)
    quiet.install(verbose=verbose_asked(sys.argv))
    app.run(main_for(program, run), flags_parser=own_flags_parser(program, define_flags))


def own_flags_parser(program, define_flags):
    """Defines a command's flags and returns flags_parser with a --help of those flags only."""
    before = set(flags.FLAGS)
    define_flags()
    names = [name for name in flags.FLAGS if name not in before]
    return flags_parser(program, help_text=lambda: flags_help(program, names))


def flags_help(program, names):
    """A command's --help: its own flags (not absl's), each with its default and its help."""
    import textwrap

    lines = [f"usage: {program} [--flag=value ...]", ""]
    for name in names:
        flag = flags.FLAGS[name]
        default = "" if flag.default is None else f"={flag.default_as_str.strip(chr(39))}"
        lines.append(f"  --{name}{default}")
        lines += textwrap.wrap(flag.help, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def flags_parser(program, check_first=None, define_rest=None, help_text=None):
    """absl's flag parser, but a bad flag is one line `<program>: error: ...` and exit code 2, and --help prints
    `help_text()` and exits 0.

    With `check_first`, the flags defined so far are parsed and checked first (before `define_rest` defines the
    others, which may import TensorFlow), so a wrong name is refused at once.
    """

    def parse(argv):
        asked_help = any(argument in HELP_ARGUMENTS for argument in argv[1:])
        argv = [argument for argument in argv if argument not in HELP_ARGUMENTS]
        try:
            if check_first:
                flags.FLAGS(argv, known_only=True)
                check_first()
            if define_rest:
                define_rest()
            remaining = flags.FLAGS(argv)
            if asked_help:
                print(help_text() if help_text else flags.FLAGS.main_module_help())
                sys.exit(0)
            return remaining
        except (flags.Error, UsageError) as error:
            message = " ".join(str(error).split())  # one line, whatever absl wrapped
            print(f"{program}: error: {message}", file=sys.stderr)
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
        except BrokenPipeError:  # `spml-train --print_config | head`: the reader is gone, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            stopping.exit(1)

    return main


def _report(program, message):
    if "verbose" in flags.FLAGS and flags.FLAGS.verbose:
        traceback.print_exc()
    print(f"{program}: {message}", file=sys.stderr, flush=True)
