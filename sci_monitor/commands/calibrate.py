"""`sci-monitor calibrate`: refit a checkpoint's controller on validation from its weights (no retraining)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sci_monitor import options

NAME = "calibrate"
HELP = "refit a checkpoint's controller on validation from its weights (no retraining) and rewrite its card"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=options.recipe_names(extra=("all",)), required=True, metavar="NAME",
                   help="a recipe (mitdb, cwru, cwru-loadshift, paper-bearings, paper-mitdb) or all")
    options.add_device(p)
    p.add_argument("--out", help="checkpoint directory (default: the package's models/checkpoints)")
    options.add_json(p, "the recalibrated cards")


def run(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from controller.evaluation import calibrate_command
    from models.recipes import RECIPES

    options.prepare_output(a.json)
    device, cards = options.resolve_device(a.device), []
    for name in list(RECIPES) if a.dataset == "all" else [a.dataset]:
        card = calibrate_command(name, device, log=options.log, **({"checkpoint_dir": Path(a.out)} if a.out else {}))
        m = card.metrics["controller"]
        options.log(f"[{name}] test split, controller: escalation {m['escalation_rate']}, risk among answered "
                    f"{m['risk_answered']}, AUROC {m['auroc_misclassification']}")
        cards.append(asdict(card))
    options.emit(a, cards, lambda: None)
    return 0
