"""`sci-monitor rpeaks`: the streaming R-peak detector against the reference annotations, live vs offline labels."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "rpeaks"
HELP = "streaming R-peak detector vs the reference annotations; live vs offline labels"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", nargs="+", help="MIT-BIH records (default: all 44)")
    p.add_argument("--checkpoint", default="mitdb", help="model for the label agreement ('none' to skip)")
    p.add_argument("--data-dir", help="data directory (default: SCI_DATA_DIR or ../shared/data)")
    p.add_argument("--json", metavar="FILE", help="write the per-record numbers to this JSON file")
    options.add_device(p)


def run(a: argparse.Namespace) -> int:
    from streams.rpeak_check import rpeaks_command

    return rpeaks_command(a.records, a.checkpoint, a.data_dir, options.prepare_output(a.json),
                          options.resolve_device(a.device), options.console())
