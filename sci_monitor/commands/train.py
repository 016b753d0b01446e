"""`sci-monitor train`: train a model, calibrate it on validation and save a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from sci_monitor import options

NAME = "train"
HELP = "train a model, calibrate it on validation and save a checkpoint"


def _protocols() -> list[str]:
    from models.selection import PROTOCOLS

    return list(PROTOCOLS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=options.recipe_names(extra=("all",)), required=True, metavar="NAME",
                   help="a recipe (mitdb, cwru, cwru-loadshift, paper-bearings, paper-mitdb) or all")
    p.add_argument("--seed", type=int, default=42)
    options.add_device(p)
    p.add_argument("--out", help="checkpoint directory (default: the package's models/checkpoints)")
    p.add_argument("--cv", action="store_true",
                   help="instead of training the checkpoint, cross-validate the recipe on its training data, grouped "
                        "by record (mitdb: DS1 folds, never DS2; how the ECG recipe was chosen); writes nothing")
    p.add_argument("--cv-protocol", choices=options.LazyChoices(_protocols), default="groups", metavar="NAME",
                   help="with --cv: 'groups' = the recipe's record groups (3 folds for mitdb), 'records' = leave one "
                        "record of those groups out at a time (16 folds for mitdb, about 5x longer)")
    options.add_json(p, "the trained models' cards (with --cv: the cross-validation report)")


def run(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from controller.evaluation import train_command
    from models.recipes import RECIPES

    if a.cv:
        return _cross_validate(a)
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


def _cross_validate(a: argparse.Namespace) -> int:
    from models.selection import FOLDS, cross_validate

    if a.dataset not in FOLDS:
        raise ValueError(f"--cv needs a recipe with record folds: {', '.join(FOLDS)}")
    options.prepare_output(a.json)
    report = cross_validate(a.dataset, seed=a.seed, device=options.resolve_device(a.device), log=options.log,
                            protocol=a.cv_protocol)
    p = report["pooled"]

    def render() -> None:
        per = ", ".join(f"{c} {v['sensitivity']:.2f} / {v['ppv']:.2f}" for c, v in p["per_class"].items())
        print(f"{a.dataset} record-grouped CV, pooled held-out beats ({p['windows']}): accuracy {p['accuracy']:.4f}, "
              f"macro-F1 {'/'.join(report['criterion'])} {p['macro_f1_criterion']:.4f}; sensitivity / PPV: {per}")

    options.emit(a, report, render)
    return 0
