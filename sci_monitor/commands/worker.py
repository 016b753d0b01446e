"""`sci-monitor worker`: one streaming worker (Faust) until interrupted."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "worker"
HELP = "run a streaming worker (Faust) until interrupted"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_settings(p, worker=True)
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])


def run(a: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(options.settings(a), loglevel=a.loglevel)  # preflight first: one line for what is missing
    return 0
