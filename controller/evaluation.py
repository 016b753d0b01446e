"""`sci-monitor train` and `sci-monitor evaluate`: fit a recipe, calibrate on validation, compare all methods on test.

Every method sees the same test windows and the same MC passes (drawn once, keyed), so differences between methods
are differences of decision rules, not of random draws.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from controller import metrics, plots
from controller.calibration import Calibration, Fold, calibrate, decider_from_card, policies_from
from controller.methods import Outcome, run_all
from controller.passes import SplitPasses, sample_passes
from controller.policies import POLICIES
from controller.report import summarize
from models.checkpoint import (
    CHECKPOINT_DIR,
    ModelCard,
    checkpoint_dir_of,
    code_version,
    density_path,
    load_checkpoint,
    load_fold_model,
    save_card,
    save_checkpoint,
    save_density,
    save_fold_model,
)
from models.controller_card import PolicySpec
from models.recipes import Recipe, Splits, get_recipe
from models.training import Arrays, train_model

Log = Callable[[str], None]
TEST_KEY_OFFSET = 1 << 40  # test windows get keys disjoint from validation windows


def quiet(_: str) -> None:
    pass


def card_for(model: torch.nn.Module, recipe: Recipe, cal: Calibration, seed: int, train: dict[str, Any]) -> ModelCard:
    return ModelCard(
        name=recipe.name, arch=model.arch, arch_params=dict(model.arch_params), dataset=recipe.dataset,
        modality=recipe.modality, split=recipe.split, classes=list(recipe.classes), fs=recipe.fs,
        input_length=model.input_length, aux=recipe.aux, temperature=round(cal.temperature, 5),
        controller=cal.controller, seed=seed, train=train)


def cross_fitted(recipe: Recipe, seed: int, device: str | torch.device = "cpu", log: Log = quiet,
                 directory: Path = CHECKPOINT_DIR, retrain: bool = False) -> list[Fold]:
    """The recipe's cross-fitted models (``Recipe.cross_fit``), each trained like the checkpoint (same config and
    seed) without its held-out records: loaded from ``directory``/folds, or trained and stored there when missing
    (or when ``retrain``). Empty for a recipe without folds."""
    if recipe.cross_fit is None:
        return []
    held = recipe.cross_fit()
    folds = []
    for i, h in enumerate(held, 1):
        which = " ".join(h.records)
        model = None if retrain else load_fold_model(recipe.name, i, h.records, seed, device, directory)
        if model is None:
            log(f"[{recipe.name}] training cross-fitted model {i}/{len(held)} (without records {which})")
            model, stats = train_model(recipe.make_model, h.train, len(recipe.classes),
                                       replace(recipe.train, seed=seed), device,
                                       on_epoch=lambda e, loss, i=i: log(f"[{recipe.name}] fold {i} epoch {e}: "
                                                                         f"loss {loss:.4f}"))
            path = save_fold_model(model, recipe.name, i, h.records, seed, directory)
            log(f"[{recipe.name}] trained in {stats['seconds']} s; wrote {path}")
        folds.append(Fold(which, model, h.train, h.held_out))
    return folds


def train_and_calibrate(name: str, seed: int = 42, device: str | torch.device = "cpu", log: Log = quiet,
                        splits: Splits | None = None, checkpoint_dir: Path = CHECKPOINT_DIR
                        ) -> tuple[torch.nn.Module, ModelCard, Calibration]:
    """Train the recipe's model on its train split (and its cross-fitted models, stored in ``checkpoint_dir``),
    then calibrate on its validation split (never on test)."""
    recipe = get_recipe(name)
    splits = splits or recipe.load(seed)
    log(f"[{name}] windows: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    model, stats = train_model(recipe.make_model, splits.train, len(recipe.classes), replace(recipe.train, seed=seed),
                               device, on_epoch=lambda e, loss: log(f"[{name}] epoch {e}: loss {loss:.4f}"))
    folds = cross_fitted(recipe, seed, device, log, checkpoint_dir, retrain=True)
    cal = calibrate(model, splits.train, splits.val, recipe.controller, recipe.temperature, len(recipe.classes),
                    device, log=lambda m: log(f"[{name}] {m}"), fs=recipe.fs, folds=folds)
    log(f"[{name}] trained in {stats['seconds']} s")
    card = card_for(model, recipe, cal, seed, {**asdict(recipe.train), "seed": seed, **stats, "windows": {
        "train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}})
    return model, card, cal


def compare_methods(model: torch.nn.Module, card: ModelCard, data: Arrays, device: str | torch.device = "cpu",
                    policies: tuple[PolicySpec, ...] | None = None, directory: Path = CHECKPOINT_DIR
                    ) -> tuple[dict[str, Outcome], SplitPasses]:
    """Draw the test passes once, then run the baselines, the SCI policies (the card's candidates, or ``policies``)
    alone, and the card's full decision (``controller``) on them."""
    c = card.controller
    decider = decider_from_card(card, directory)
    test = sample_passes(model, data, c.t_max, device, key_offset=TEST_KEY_OFFSET)
    return run_all(test, policies_from(policies or c.spec.candidates), decider.config, c.baseline_thresholds,
                   decider), test


def parse_policies(names: list[str] | None, card: ModelCard) -> tuple[PolicySpec, ...] | None:
    """``--policies``: registered policy names, with the card's parameters where the card has that candidate and
    the policy's defaults otherwise."""
    if not names:
        return None
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown SCI policy {unknown[0]!r}; choose from {sorted(POLICIES)}")
    have = {p.name: p for p in card.controller.spec.candidates}
    return tuple(have.get(n, PolicySpec(n, {})) for n in names)


def evaluate(name: str, checkpoint: str | None = None, json_out: Path | None = None, plots_dir: Path | None = None,
             device: str | torch.device = "cpu", n_boot: int = 1000, log: Log = quiet,
             checkpoint_dir: Path = CHECKPOINT_DIR, policies: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a committed checkpoint on its recipe's test split; returns (and optionally writes) the report."""
    recipe: Recipe = get_recipe(name)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
    model, card = load_checkpoint(checkpoint or name, device, checkpoint_dir)
    start = time.perf_counter()
    splits = recipe.load(card.seed)
    log(f"[{name}] test windows: {len(splits.test)} ({card.split})")
    outcomes, test = compare_methods(model, card, data=splits.test, device=device,
                                     policies=parse_policies(policies, card),
                                     directory=checkpoint_dir_of(checkpoint or name, checkpoint_dir))
    report = build_report(card, outcomes, test.y, n_boot)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {json_out}")
    if plots_dir:
        for p in write_plots(outcomes, test.y, plots_dir, name, "controller"):
            log(f"wrote {p}")
    return report


def build_report(card: ModelCard, outcomes: dict[str, Outcome], y: np.ndarray, n_boot: int) -> dict[str, Any]:
    classes = tuple(card.classes)
    return {
        "dataset": card.name,
        "split": f"test — {card.split}",
        "checkpoint": {"name": card.name, "code_version": card.code_version, "seed": card.seed,
                       "temperature": card.temperature, "policy": card.controller.policy.name},
        "selected_policy": f"sci_{card.controller.policy.name}",
        "selected_method": "controller",
        "risk_rule": None if card.controller.risk is None else asdict(card.controller.risk),
        "methods": {m: summarize(o, y, classes, n_boot=n_boot) for m, o in outcomes.items()},
    }


def write_plots(outcomes: dict[str, Outcome], y: np.ndarray, out: Path, name: str, method: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    curves = {m: metrics.risk_coverage(o.confidence, o.label == y) for m, o in outcomes.items()}
    sel = outcomes[method]
    correct = sel.label == y
    return [
        plots.plot_risk_coverage(curves, out / f"{name}_risk_coverage.png"),
        plots.plot_passes_hist(sel.passes, correct, out / f"{name}_passes_hist.png", f"{name}: passes ({method})"),
        plots.plot_delta_sp(sel.delta_sp, correct, out / f"{name}_delta_sp.png", f"{name}: ΔSP ({method})"),
    ]


KEEP = ("error", "macro_f1", "auroc_misclassification", "auroc_delta_sp", "auroc_1_minus_sp", "mean_passes",
        "passes_correct", "passes_wrong", "abstain_rate", "escalation_rate", "risk_answered", "coverage",
        "accuracy_non_abstained", "aurc", "ece")


def card_metrics(model: torch.nn.Module, card: ModelCard, test: Arrays, device: str | torch.device, n_boot: int,
                 directory: Path) -> dict[str, Any]:
    """The card's ``metrics``: test split, the controller beside one plain pass and fixed-T."""
    outcomes, passes = compare_methods(model, card, data=test, device=device, directory=directory)
    reports = {m: summarize(o, passes.y, tuple(card.classes), n_boot=n_boot)
               for m, o in outcomes.items() if m in ("controller", "deterministic", "fixed_t")}
    return {"split": "test", "method": "controller", **{m: {k: r[k] for k in KEEP} for m, r in reports.items()}}


def train_command(name: str, seed: int = 42, device: str | torch.device = "cpu", log: Log = quiet,
                  checkpoint_dir: Path = CHECKPOINT_DIR, n_boot: int = 200) -> ModelCard:
    """Train, calibrate, record validation and test metrics on the card, save the checkpoint."""
    recipe = get_recipe(name)
    splits = recipe.load(seed)
    model, card, cal = train_and_calibrate(name, seed, device, log, splits, checkpoint_dir)
    save_checkpoint(model, card, checkpoint_dir)
    _save_novelty(card, cal, checkpoint_dir)
    card.metrics = card_metrics(model, card, splits.test, device, n_boot, checkpoint_dir)
    path = save_card(card, checkpoint_dir)
    log(f"[{name}] saved {path}")
    return card


def _save_novelty(card: ModelCard, cal: Calibration, directory: Path) -> None:
    if cal.novelty is not None:
        save_density(card.name, {k: m.state() for k, m in cal.novelty.items()}, directory)
    else:
        density_path(card.name, directory).unlink(missing_ok=True)


def calibrate_command(name: str, device: str | torch.device = "cpu", log: Log = quiet,
                      checkpoint_dir: Path = CHECKPOINT_DIR, n_boot: int = 200) -> ModelCard:
    """Recalibrate a saved checkpoint from its weights (no retraining, except its cross-fitted models when they are
    missing): rewrite its card's temperature and controller section, store its novelty model, refresh the card's
    test metrics."""
    recipe = get_recipe(name)
    model, card = load_checkpoint(name, device, checkpoint_dir)
    splits = recipe.load(card.seed)
    start = time.perf_counter()
    folds = cross_fitted(recipe, card.seed, device, log, checkpoint_dir)
    cal = calibrate(model, splits.train, splits.val, recipe.controller, recipe.temperature, len(recipe.classes),
                    device, log=lambda m: log(f"[{name}] {m}"), fs=recipe.fs, folds=folds)
    card.temperature = round(cal.temperature, 5)
    card.controller = cal.controller
    card.code_version = code_version()
    _save_novelty(card, cal, checkpoint_dir)
    card.metrics = card_metrics(model, card, splits.test, device, n_boot, checkpoint_dir)
    path = save_card(card, checkpoint_dir)
    log(f"[{name}] recalibrated in {time.perf_counter() - start:.0f} s; wrote {path}")
    return card
