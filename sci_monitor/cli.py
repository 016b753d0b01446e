"""The `sci-monitor` command line.

Offline: train, calibrate, evaluate, evaluate-shift, reproduce-paper, rpeaks, data, bench.
Online: stack, worker, replay, config, demo, alerts, grafana, report.
Misuse and failures print one line (``sci-monitor: error: ...``) and exit 2; ``--debug`` shows the traceback.

Adding a command: write ``sci_monitor/commands/<name>.py`` with ``NAME`` (the command word), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> exit code``, importing heavy modules (torch, Faust, streams) inside
``run`` only, and add the module to ``COMMANDS``. Shared argument types, settings flags and JSON/table output are
in :mod:`sci_monitor.options`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

COMMANDS = ("train", "calibrate", "evaluate", "evaluate_shift", "reproduce_paper", "rpeaks", "bench", "stack", "worker",
            "replay", "demo", "config", "data", "alerts", "grafana", "report")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``sci-monitor <command>: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sci-monitor")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """``--version`` without reading package metadata unless asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(f"sci-monitor {_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sci-monitor", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module_name in COMMANDS:
        command = importlib.import_module(f"sci_monitor.commands.{module_name}")
        sp = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(sp)
        sp.set_defaults(run=command.run)
    return p


def _one_line(exc: BaseException) -> str:
    """The error as one line; unexpected kinds carry their type and the --debug hint."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError | ValueError | RuntimeError | KeyError):  # what our code raises on purpose
        return text
    return f"{type(exc).__name__}: {text} (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"sci-monitor: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
