"""Shared pieces of the commands: validated argument types, the settings flags, consoles and JSON/table output.

Nothing here imports torch, Faust or the streams package at module level (``sci-monitor --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


# ------------------------------------------------------------------------------------------ argument types
def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (argparse type)."""
    if not DEVICE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


class LazyChoices:
    """Choices computed on first use (e.g. recipe names, which import torch): ``--help`` of the program does not
    pay for them, only the command that uses them."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load, self._values = load, None

    def _get(self) -> list[str]:
        if self._values is None:
            self._values = list(self._load())
        return self._values

    def __contains__(self, item: object) -> bool:
        return item in self._get()

    def __iter__(self):
        return iter(self._get())


def recipe_names(extra: tuple[str, ...] = ()) -> LazyChoices:
    def load() -> list[str]:
        from models.recipes import RECIPES

        return [*RECIPES, *extra]

    return LazyChoices(load)


def add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--device", type=device, default=default, help="auto | cpu | cuda[:N] (default auto)")


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help=f"write {what} as JSON to FILE, or to stdout instead of the table with a bare --json")


def resolve_device(pref: str) -> str:
    from models.device import resolve_device as resolve

    return str(resolve(pref))


# ---------------------------------------------------------------------------------------------- settings
SETTING_FLAGS = {  # CLI flag (argparse dest) -> Settings field
    "bootstrap": "kafka_bootstrap", "influx_url": "influx_url", "influx_version": "influx_version",
    "influx_db": "influx_db", "influx_org": "influx_org", "influx_bucket": "influx_bucket",
    "batch_size": "batch_size", "batch_timeout": "batch_timeout_s", "device": "device", "state_dir": "state_dir",
    "app_id": "app_id", "models": "models",
}


def add_settings(p: argparse.ArgumentParser, kafka: bool = True, influx: bool = True, worker: bool = False) -> None:
    """The flags that override settings (flags > SCI_* env > TOML > defaults)."""
    p.add_argument("--config", help="TOML settings file (see `sci-monitor config show`)")
    p.add_argument("--state-dir", help="local stack state directory (default ./.state)")
    if kafka:
        p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port[,host:port]")
    if influx:
        p.add_argument("--influx-url")
        p.add_argument("--influx-version", choices=["auto", "1", "2"])
        p.add_argument("--influx-db", help="1.x database")
        p.add_argument("--influx-org", help="2.x organisation (token from SCI_INFLUX_TOKEN)")
        p.add_argument("--influx-bucket", help="2.x bucket")
    if worker:
        p.add_argument("--batch-size", type=positive_int)
        p.add_argument("--batch-timeout", type=non_negative_float, help="seconds to wait to fill a batch")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"])
        p.add_argument("--app-id", help="Faust app id = consumer group")
        p.add_argument("--models", help="modality[:lead]=checkpoint, ... (default: the modality registry's)")


def settings(a: argparse.Namespace):
    from streams.settings import load_settings

    overrides = {f: getattr(a, flag) for flag, f in SETTING_FLAGS.items() if getattr(a, flag, None) is not None}
    return load_settings(a.config, overrides)


# ------------------------------------------------------------------------------------------------ output
def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, markup=False)


def log(message: str) -> None:
    """Progress and notes go to stderr, results to stdout."""
    print(message, file=sys.stderr, flush=True)


def prepare_output(path: str | None) -> Path | None:
    """Create the folder of an output file before a long run (so a typo fails now, not after an hour)."""
    if path is None or path == "-":
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def emit(a: argparse.Namespace, data: Any, render: Callable[[], None], *, file_written: bool = False) -> None:
    """Print the result: JSON on stdout for a bare ``--json``, else ``render()``; ``--json FILE`` also writes it
    (unless the command already did: ``file_written``)."""
    target = getattr(a, "json", None)
    text = json.dumps(data, indent=2, default=str) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    render()
    if target is not None and not file_written:
        prepare_output(target).write_text(text)
        log(f"wrote {target}")
