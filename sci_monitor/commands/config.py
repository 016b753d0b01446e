"""`sci-monitor config show`: the effective settings, secrets masked."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "config"
HELP = "print the effective settings (secrets masked)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"])
    options.add_settings(p, worker=True)
    options.add_json(p, "the settings")


def run(a: argparse.Namespace) -> int:
    from rich.table import Table

    masked = options.settings(a).masked()

    def render() -> None:
        t = Table(title="effective settings (flags > SCI_* env > TOML > defaults)")
        t.add_column("setting", no_wrap=True)
        t.add_column("value", overflow="fold")
        for k, v in masked.items():
            t.add_row(k, str(v))
        options.console().print(t)

    options.emit(a, masked, render)
    return 0
