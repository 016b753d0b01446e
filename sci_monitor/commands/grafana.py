"""`sci-monitor grafana render`: the dashboards and alert rules for the effective settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from sci_monitor import options

NAME = "grafana"
HELP = "write the Grafana dashboards and alert rules for the effective settings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["render"])
    p.add_argument("--out", default="grafana", help="directory receiving dashboards/ and provisioning/alerting/")
    options.add_settings(p, kafka=False, influx=False)


def run(a: argparse.Namespace) -> int:
    from streams.grafana import render

    for path in render(options.settings(a), Path(a.out)):
        options.log(f"wrote {path}")
    return 0
