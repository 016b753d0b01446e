"""Everything fitted after training, on the validation split only: temperature, stop policy, baseline thresholds.

Policy choice: among the candidate policies, the one with the best validation AUROC of 1 − SP for detecting
misclassified windows whose mean passes stay within a third of the budget (ties: fewer passes); if none is that
cheap, the cheapest. A recipe can pin the policy (``"select"``), as the paper-faithful recipes do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from controller import metrics
from controller.engine import SciConfig
from controller.methods import confidence_threshold, deterministic, sci
from controller.passes import SplitPasses
from controller.policies import Policy, make_policy
from models.checkpoint import ModelCard
from models.training import fit_temperature


@dataclass(frozen=True)
class Calibration:
    temperature: float
    policy: str
    params: dict[str, Any]
    baseline_thresholds: dict[str, float]  # max_prob / entropy abstention thresholds
    validation: dict[str, dict[str, float]]  # per candidate policy: auroc_1_minus_sp, mean_passes, abstain_rate


def policies_from(spec: dict[str, dict[str, Any]]) -> dict[str, Policy]:
    return {name: make_policy(name, **params) for name, params in spec.items()}


def calibrate(val: SplitPasses, controller_spec: dict[str, Any], temperature: float | None) -> Calibration:
    """Fit T (unless fixed) on the validation MC-mean logits, then choose the policy and baseline thresholds."""
    t_max = int(controller_spec["t_max"])
    if temperature is None:
        temperature = fit_temperature(val.mc.mean(1), torch.as_tensor(val.y))
    cfg = SciConfig(temperature=temperature, t_max=t_max, sp_star=float(controller_spec["sp_star"]))
    report: dict[str, dict[str, float]] = {}
    for name, policy in policies_from(controller_spec["policies"]).items():
        o = sci(val, policy, cfg)
        err = o.label != val.y
        report[name] = {"auroc_1_minus_sp": metrics.auroc(1 - o.sp, err), "mean_passes": float(o.passes.mean()),
                        "abstain_rate": float(o.abstained.mean()), "error": float(err.mean())}
    chosen = controller_spec.get("select") or _select(report, t_max)
    rate = report[chosen]["abstain_rate"]
    det = deterministic(val, cfg)
    thresholds = {"max_prob": confidence_threshold(det.max_prob, rate), "entropy": confidence_threshold(det.sp, rate)}
    return Calibration(temperature, chosen, dict(controller_spec["policies"][chosen]), thresholds, report)


def _select(report: dict[str, dict[str, float]], t_max: int) -> str:
    cheap = {k: v for k, v in report.items() if v["mean_passes"] <= t_max / 3}
    pool = cheap or report
    if not cheap:
        return min(pool, key=lambda k: pool[k]["mean_passes"])
    return max(pool, key=lambda k: (np.nan_to_num(pool[k]["auroc_1_minus_sp"], nan=-1), -pool[k]["mean_passes"]))


def controller_config(card: ModelCard) -> tuple[Policy, SciConfig]:
    """The policy and SciConfig a checkpoint's card prescribes."""
    c = card.controller
    return make_policy(c["policy"], **c["params"]), SciConfig(card.temperature, int(c["t_max"]), float(c["sp_star"]))
