"""`sci-monitor evaluate-shift`: the shift benchmark (shifted test windows; never used to fit or choose)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sci_monitor import options

NAME = "evaluate-shift"
HELP = "shift benchmark: AUROC per score, escalation and answered-wrong rates on shifted test windows"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=["mitdb", "cwru"], required=True)
    options.add_json(p, "the report")
    p.add_argument("--plots", help="write PNG plots into this directory")
    options.add_device(p)


def _f(v: float | None, pct: bool = False) -> str:
    return "—" if v is None else (f"{v:.1%}" if pct else f"{v:.2f}")


def run(a: argparse.Namespace) -> int:
    json_file = options.prepare_output(a.json)
    if a.plots:
        Path(a.plots).mkdir(parents=True, exist_ok=True)
    from controller.shift import evaluate_shift

    report = evaluate_shift(a.dataset, json_file, Path(a.plots) if a.plots else None,
                            options.resolve_device(a.device), log=options.log)

    def render() -> None:
        from rich.table import Table

        t = Table(title=f"{report['dataset']}: shift benchmark (test windows)", title_justify="left")
        for c in ("shift", "AUROC novelty", "AUROC 1−p", "escalated", "answ. wrong", "plain wrong"):
            t.add_column(c, justify="left" if c == "shift" else "right", no_wrap=c == "shift")
        ind = report["in_distribution"]
        t.add_row("in distribution", "—", "—", _f(ind["escalation_rate"], True),
                  _f(ind["answered_wrong_rate"], True), _f(ind["deterministic_answered_wrong_rate"], True))
        for name, r in report["shifts"].items():
            t.add_row(name, _f(r["scores"]["novelty"]["auroc"]), _f(r["scores"]["1_minus_max_prob"]["auroc"]),
                      _f(r["escalation_rate"], True), _f(r["answered_wrong_rate"], True),
                      _f(r["deterministic_answered_wrong_rate"], True))
        options.console().print(t)

    options.emit(a, report, render, file_written=json_file is not None)
    return 0
