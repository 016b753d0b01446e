"""`sci-monitor report`: the key panels rendered from the stored data to PNGs and an index.html."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "report"
HELP = "render the key panels from the stored data to PNGs and an index.html"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="1h", help="time range ending now: 90s, 15m, 1h, 2d (default 1h)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--stream", help="stream of the SP/ΔSP panel (default: the one with the most ΔSP alerts)")
    options.add_settings(p, kafka=False)


def run(a: argparse.Namespace) -> int:
    from streams.report import report_command

    page = report_command(options.settings(a), a.since, a.out, a.stream)
    options.console().print(f"wrote {page} and its PNGs")
    return 0
