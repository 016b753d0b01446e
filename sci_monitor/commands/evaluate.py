"""`sci-monitor evaluate`: every SCI policy vs. the baselines on the test split of a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from sci_monitor import options

NAME = "evaluate"
HELP = "the controller, the SCI policies alone and the baselines on a checkpoint's test split"

# (key, header): two narrow tables instead of one wide one, so they read at 80 columns
QUALITY = (("error", "error"), ("macro_f1", "macro-F1"), ("auroc_misclassification", "AUROC own"),
           ("auroc_1_minus_sp", "AUROC 1−SP"), ("aurc", "AURC"), ("ece", "ECE"))
COST = (("mean_passes", "passes"), ("passes_correct", "correct"), ("passes_wrong", "wrong"),
        ("escalation_rate", "escalated"), ("risk_answered", "risk answ."), ("coverage", "coverage"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=options.recipe_names(), required=True, metavar="NAME",
                   help="a recipe (mitdb, cwru, cwru-loadshift, paper-bearings, paper-mitdb)")
    p.add_argument("--checkpoint", help="checkpoint name or .json path (default: the dataset's committed one)")
    options.add_json(p, "the report")
    p.add_argument("--plots", help="write PNG plots into this directory")
    p.add_argument("--bootstrap", type=options.positive_int, default=1000,
                   help="bootstrap replicates for the AUROC CIs (default 1000)")
    options.add_device(p)
    p.add_argument("--policies", nargs="+", metavar="POLICY",
                   help="SCI policies to run alone: any registered one (default: the card's candidates)")


def methods_tables(title: str, methods: dict[str, dict]) -> list:
    """The report's methods as two tables (quality, cost) that each fit 80 columns."""
    from rich.table import Table

    tables = []
    for name, cols in (("quality", QUALITY), ("cost: passes per window, abstentions", COST)):
        t = Table(title=f"{title} — {name}", title_justify="left")
        t.add_column("method", no_wrap=True)
        for _, header in cols:
            t.add_column(header, justify="right")
        for method, m in methods.items():
            t.add_row(method, *("—" if m.get(k) is None else _fmt(k, m[k]) for k, _ in cols))
        tables.append(t)
    return tables


def _fmt(key: str, value: float) -> str:
    if key in ("error", "escalation_rate", "risk_answered", "coverage", "ece"):
        return f"{value:.2%}"
    return f"{value:.3f}"


def run(a: argparse.Namespace) -> int:
    json_file = options.prepare_output(a.json)
    if a.plots:
        Path(a.plots).mkdir(parents=True, exist_ok=True)
    from controller.evaluation import evaluate

    device = options.resolve_device(a.device)
    err = options.console(stderr=True)
    with err.status(f"evaluating {a.dataset} on {device} ...") as status:
        def progress(message: str) -> None:
            err.print(message)
            status.update(f"{message} ...")

        report = evaluate(a.dataset, a.checkpoint, json_file, Path(a.plots) if a.plots else None, device,
                          n_boot=a.bootstrap, log=progress, policies=a.policies)

    def render() -> None:
        out = options.console()
        for t in methods_tables(f"{report['dataset']}: {report['split']}", report["methods"]):
            out.print(t)

    options.emit(a, report, render, file_written=json_file is not None)
    return 0
