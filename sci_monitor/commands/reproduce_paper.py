"""`sci-monitor reproduce-paper`: the paper's protocol (seeds pooled) beside its Table 4."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "reproduce-paper"
HELP = "run the paper's protocol and print it beside its Table 4"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_json(p, "the rows")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 42 100 2024)")
    options.add_device(p)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def run(a: argparse.Namespace) -> int:
    options.prepare_output(a.json)
    from rich.table import Table

    from controller.paper import PAPER_TABLE4, SEEDS, reproduce

    seeds = tuple(a.seeds) if a.seeds else SEEDS
    result = reproduce(seeds, options.resolve_device(a.device), log=options.log)

    def render() -> None:
        t = Table(title=f"Paper Table 4 vs this run (seeds {', '.join(map(str, seeds))}, test sets pooled)")
        for c in ("row", "source", "error", "AUROC ΔSP [95% CI]", "passes correct", "passes wrong", "abstain"):
            t.add_column(c, justify="right" if c not in ("row", "source") else "left", no_wrap=c == "row")
        for row, r in result["rows"].items():
            q = PAPER_TABLE4[row]
            t.add_row(row, "paper (quoted)", f"{q['error']:.2%}", f"{q['auroc_delta_sp']:.2f}",
                      f"{q['passes_correct']:.2f}", f"{q['passes_wrong']:.2f}", "—")
            lo, hi = r["auroc_delta_sp_ci95"]
            t.add_row("", "ours (run)", f"{r['error']:.2%} ({r['n_errors']}/{r['n']})",
                      f"{_fmt(r['auroc_delta_sp'])} [{_fmt(lo)}, {_fmt(hi)}]", _fmt(r["passes_correct"]),
                      _fmt(r["passes_wrong"]), f"{r['abstain_rate']:.1%}")
        options.console().print(t)

    options.emit(a, result, render)
    return 0
