"""The ``mrlearn`` command line.

Each sub-command lives in ``mrlearn.commands.<name>`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
User errors (:class:`mrlearn.errors.MrlearnError`) are printed as one line and exit with status 2. A run stopped
by SIGTERM/SIGINT/SIGHUP (:class:`mrlearn.errors.RunInterrupted`), in training or outside it, prints one line
saying how to resume and exits ``128 + signal`` (143 / 130 / 129). Output into a closed pipe (``mrlearn ... | head``) ends quietly.
``mrlearn --version`` is answered before any sub-command is imported (no numpy, torch or Lightning).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mrlearn import __version__
from mrlearn.errors import MrlearnError, RunInterrupted

# Order is the order shown in ``mrlearn --help``.
COMMANDS = ("demo", "simulate", "convert", "train", "reconstruct", "evaluate", "study", "qmri", "configs")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` set, just that sub-command is imported (fast start-up)."""
    parser = argparse.ArgumentParser(prog="mrlearn", description="Deep learning for MRI reconstruction and quantitative MRI.")
    parser.add_argument("--version", action="version", version=f"mrlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only in COMMANDS else COMMANDS:
        importlib.import_module(f"mrlearn.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. --help into `| head`
        _quiet_stdout()
        return 141


def _version_parser() -> argparse.ArgumentParser:
    """A parser holding only ``--version`` (argparse's own action: prints ``mrlearn X.Y.Z``, exits 0)."""
    parser = argparse.ArgumentParser(prog="mrlearn", add_help=False)
    parser.add_argument("--version", action="version", version=f"mrlearn {__version__}")
    return parser


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    # the options before the sub-command: --version (or an abbreviation argparse accepts) exits here, cheaply,
    # unless a help option comes first (argparse acts on the first of them)
    head = argv[: argv.index(first)] if first is not None else argv
    if not any(a == "-h" or (len(a) > 2 and "--help".startswith(a)) for a in head):
        _version_parser().parse_known_args(head)
    parser = build_parser(only=first)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    previous = _stop_on_signals()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except MrlearnError as exc:
        _say(f"mrlearn: error: {exc}")
        return 2
    except RunInterrupted as exc:
        _say(f"mrlearn: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("mrlearn: interrupted")
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE
    finally:
        _restore_signals(previous)


def _interrupt(signum: int, frame: object) -> None:
    raise RunInterrupted(signum, "outside a training step", None, "the same command again")


def _stop_on_signals() -> dict:
    """SIGTERM and SIGHUP end a command like SIGINT does: an exception, so run folders record "interrupted" and one
    line is printed (a fit installs its own handlers, which save a checkpoint first, and restores these after).
    Returns the handlers replaced."""
    import signal
    import threading

    previous: dict = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, _interrupt)
    return previous


def _restore_signals(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def _quiet_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null so the final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
