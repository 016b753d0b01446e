"""`sci-monitor data fetch`: download a dataset from its publisher."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sci_monitor import options

NAME = "data"
HELP = "download a dataset from its publisher (skips files already present)"


def _datasets() -> list[str]:
    from models.data.paths import DATASETS

    return list(DATASETS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["fetch"])
    p.add_argument("dataset", choices=options.LazyChoices(_datasets), metavar="DATASET", help="mitdb or cwru")
    p.add_argument("--dir", help="data directory (default: SCI_DATA_DIR or ../shared/data)")
    options.add_json(p, "the report")


def run(a: argparse.Namespace) -> int:
    from models.data.fetch import fetch

    report = fetch(a.dataset, Path(a.dir) if a.dir else None)
    options.emit(a, dataclasses.asdict(report), lambda: print(report.summary))
    return 0
