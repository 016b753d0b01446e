"""`sci-monitor train`: train a model, calibrate it on validation and save a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from sci_monitor import options

NAME = "train"
HELP = "train a model, calibrate it on validation and save a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=options.recipe_names(extra=("all",)), required=True, metavar="NAME",
                   help="a recipe (mitdb, cwru, cwru-loadshift, paper-bearings, paper-mitdb) or all")
    p.add_argument("--seed", type=int, default=42)
    options.add_device(p)
    p.add_argument("--out", help="checkpoint directory (default: the package's models/checkpoints)")
    options.add_json(p, "the trained models' cards")


def run(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from controller.evaluation import train_command
    from models.recipes import RECIPES

    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    options.prepare_output(a.json)
    names = list(RECIPES) if a.dataset == "all" else [a.dataset]
    device, cards = options.resolve_device(a.device), []
    for name in names:
        card = train_command(name, seed=a.seed, device=device, log=options.log,
                             **({"checkpoint_dir": Path(a.out)} if a.out else {}))
        m = card.metrics[card.metrics["method"]]
        options.log(f"[{name}] test split, {card.metrics['method']}: error {m['error']:.4f}, escalation "
                    f"{m['escalation_rate']}, risk among answered {m['risk_answered']}, mean passes {m['mean_passes']}")
        cards.append(asdict(card))
    options.emit(a, cards, lambda: None)
    return 0
