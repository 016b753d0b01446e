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
    from streams.app import preflight, run_worker

    s = options.settings(a)
    preflight(s)  # one clear line when the broker, InfluxDB or a checkpoint is missing, before Faust starts
    run_worker(s, loglevel=a.loglevel)
    return 0
