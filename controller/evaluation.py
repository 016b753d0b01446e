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
from controller.calibration import Calibration, calibrate, policies_from
from controller.engine import SciConfig
from controller.methods import Outcome, run_all
from controller.passes import SplitPasses, sample_passes
from controller.report import summarize
from models.checkpoint import CHECKPOINT_DIR, ModelCard, load_checkpoint, save_checkpoint
from models.recipes import Recipe, Splits, get_recipe
from models.training import Arrays, train_model

Log = Callable[[str], None]
TEST_KEY_OFFSET = 1 << 40  # test windows get keys disjoint from validation windows


def quiet(_: str) -> None:
    pass


def train_and_calibrate(name: str, seed: int = 42, device: str | torch.device = "cpu", log: Log = quiet,
                        splits: Splits | None = None) -> tuple[torch.nn.Module, ModelCard, Calibration]:
    """Train the recipe's model on its train split, then calibrate on its validation split (never on test)."""
    recipe = get_recipe(name)
    splits = splits or recipe.load(seed)
    log(f"[{name}] windows: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    model, stats = train_model(recipe.make_model, splits.train, len(recipe.classes), replace(recipe.train, seed=seed),
                               device, on_epoch=lambda e, loss: log(f"[{name}] epoch {e}: loss {loss:.4f}"))
    val = sample_passes(model, splits.val, recipe.controller["t_max"], device)
    cal = calibrate(val, recipe.controller, recipe.temperature)
    log(f"[{name}] trained in {stats['seconds']} s; T = {cal.temperature:.3f}; policy {cal.policy} (validation)")
    card = ModelCard(
        name=name, arch=model.arch, arch_params=dict(model.arch_params), dataset=recipe.dataset,
        modality=recipe.modality, split=recipe.split, classes=list(recipe.classes), fs=recipe.fs,
        input_length=model.input_length, aux=recipe.aux, temperature=round(cal.temperature, 5),
        controller={"policy": cal.policy, "params": cal.params, "t_max": recipe.controller["t_max"],
                    "sp_star": recipe.controller["sp_star"], "candidates": recipe.controller["policies"],
                    "baseline_thresholds": cal.baseline_thresholds, "selection_on_validation": cal.validation},
        seed=seed, train={**asdict(recipe.train), "seed": seed, **stats,
                          "windows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}},
    )
    return model, card, cal


def compare_methods(model: torch.nn.Module, card: ModelCard, data: Arrays, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Outcome], SplitPasses]:
    """Draw the test passes once, then run the baselines and every candidate SCI policy of the card on them."""
    c = card.controller
    cfg = SciConfig(card.temperature, int(c["t_max"]), float(c["sp_star"]))
    test = sample_passes(model, data, cfg.t_max, device, key_offset=TEST_KEY_OFFSET)
    return run_all(test, policies_from(c["candidates"]), cfg, c["baseline_thresholds"]), test


def evaluate(name: str, checkpoint: str | None = None, json_out: Path | None = None, plots_dir: Path | None = None,
             device: str | torch.device = "cpu", n_boot: int = 1000, log: Log = quiet,
             checkpoint_dir: Path = CHECKPOINT_DIR) -> dict[str, Any]:
    """Evaluate a committed checkpoint on its recipe's test split; returns (and optionally writes) the report."""
    recipe: Recipe = get_recipe(name)
    model, card = load_checkpoint(checkpoint or name, device, checkpoint_dir)
    start = time.perf_counter()
    splits = recipe.load(card.seed)
    log(f"[{name}] test windows: {len(splits.test)} ({card.split})")
    outcomes, test = compare_methods(model, card, data=splits.test, device=device)
    report = build_report(card, outcomes, test.y, n_boot)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {json_out}")
    if plots_dir:
        for p in write_plots(outcomes, test.y, plots_dir, name, card.controller["policy"]):
            log(f"wrote {p}")
    return report


def build_report(card: ModelCard, outcomes: dict[str, Outcome], y: np.ndarray, n_boot: int) -> dict[str, Any]:
    classes = tuple(card.classes)
    return {
        "dataset": card.name,
        "split": f"test — {card.split}",
        "checkpoint": {"name": card.name, "code_version": card.code_version, "seed": card.seed,
                       "temperature": card.temperature, "policy": card.controller["policy"]},
        "selected_policy": f"sci_{card.controller['policy']}",
        "methods": {m: summarize(o, y, classes, n_boot=n_boot) for m, o in outcomes.items()},
    }


def write_plots(outcomes: dict[str, Outcome], y: np.ndarray, out: Path, name: str, policy: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    curves = {m: metrics.risk_coverage(o.confidence, o.label == y) for m, o in outcomes.items()}
    sel = outcomes[f"sci_{policy}"]
    correct = sel.label == y
    return [
        plots.plot_risk_coverage(curves, out / f"{name}_risk_coverage.png"),
        plots.plot_passes_hist(sel.passes, correct, out / f"{name}_passes_hist.png", f"{name}: passes (sci_{policy})"),
        plots.plot_delta_sp(sel.delta_sp, correct, out / f"{name}_delta_sp.png", f"{name}: ΔSP (sci_{policy})"),
    ]


def train_command(name: str, seed: int = 42, device: str | torch.device = "cpu", log: Log = quiet,
                  checkpoint_dir: Path = CHECKPOINT_DIR, n_boot: int = 200) -> ModelCard:
    """Train, calibrate, record validation and test metrics on the card, save the checkpoint."""
    recipe = get_recipe(name)
    splits = recipe.load(seed)
    model, card, _ = train_and_calibrate(name, seed, device, log, splits)
    outcomes, test = compare_methods(model, card, data=splits.test, device=device)
    sel = f"sci_{card.controller['policy']}"
    keep = ("error", "macro_f1", "auroc_delta_sp", "auroc_1_minus_sp", "mean_passes", "passes_correct",
            "passes_wrong", "abstain_rate", "accuracy_non_abstained", "aurc", "ece")
    reports = {m: summarize(o, test.y, tuple(card.classes), n_boot=n_boot)
               for m, o in outcomes.items() if m in (sel, "deterministic", "fixed_t")}
    card.metrics = {"split": "test", "method": sel, **{m: {k: r[k] for k in keep} for m, r in reports.items()}}
    path = save_checkpoint(model, card, checkpoint_dir)
    log(f"[{name}] saved {path}")
    return card
