"""`sci-monitor demo`: what `make demo` runs."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "demo"
HELP = "start the local stack and a worker, replay ECG and vibration streams, summarise"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_settings(p, kafka=False, influx=False)
    p.add_argument("--duration", type=options.positive_float, default=60.0, help="seconds of replay (default 60)")
    p.add_argument("--speed", type=options.positive_float, default=10.0, help="× real time (default 10)")


def run(a: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(options.settings(a), duration_s=a.duration, speed=a.speed, console=options.console())
