"""`sci-monitor stack up|down|status`: the local broker and InfluxDB."""

from __future__ import annotations

import argparse
import dataclasses

from sci_monitor import options

NAME = "stack"
HELP = "start, stop or check the local broker and InfluxDB"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    options.add_settings(p, kafka=False, influx=False)
    options.add_json(p, "the status")


def run(a: argparse.Namespace) -> int:
    from streams.stack import LocalStack

    stack = LocalStack(options.settings(a))
    if a.action == "down":
        stack.down()
        options.emit(a, {"stopped": True}, lambda: print("local stack stopped"))
        return 0
    status = stack.up() if a.action == "up" else stack.status()
    options.emit(a, {**dataclasses.asdict(status), "healthy": status.healthy}, lambda: print(status))
    return 0 if status.healthy else 1
