"""Metrics of one method's outcome on one split, in the JSON shape of `sci-monitor evaluate`."""

from __future__ import annotations

from typing import Any

import numpy as np

from controller import metrics
from controller.methods import Outcome


def _r(x: float, nd: int = 5) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _curve(coverage: np.ndarray, risk: np.ndarray, points: int = 101) -> dict[str, list[float]]:
    """Risk-coverage curve resampled at ``points`` coverages for the JSON."""
    grid = np.linspace(coverage[0], 1.0, points)
    return {"coverage": np.round(grid, 4).tolist(), "risk": np.round(np.interp(grid, coverage, risk), 5).tolist()}


def summarize(o: Outcome, y: np.ndarray, classes: tuple[str, ...], n_boot: int = 1000, seed: int = 0
              ) -> dict[str, Any]:
    """error, per-class sensitivity/PPV, macro-F1, AUROCs (+95 % bootstrap CI), passes, abstention, AURC, ECE."""
    correct = o.label == y
    err = ~correct
    cls = metrics.classification_summary(y, o.label, classes)
    sel = metrics.selective_summary(correct, o.abstained)
    ps = metrics.passes_summary(o.passes, correct)
    cov, risk = metrics.risk_coverage(o.confidence, correct)
    auroc = metrics.auroc(o.score, err)
    auroc_sp = metrics.auroc(1 - o.sp, err)
    ci = metrics.bootstrap_auroc_ci(o.score, err, n_boot=n_boot, seed=seed)
    ci_sp = metrics.bootstrap_auroc_ci(1 - o.sp, err, n_boot=n_boot, seed=seed)
    answered = ~np.asarray(o.abstained, bool)
    return {
        "n": len(y),
        "auroc_misclassification": _r(auroc),
        "escalation_rate": _r(float(np.mean(~answered))),
        "risk_answered": _r(float(np.mean(err[answered]))) if answered.any() else None,
        "coverage": _r(float(np.mean(answered))),
        "error": _r(cls["error"]),
        "n_errors": int(err.sum()),
        "macro_f1": _r(cls["macro_f1"]),
        "per_class": {k: {m: (_r(v) if m != "support" else v) for m, v in d.items()}
                      for k, d in cls["per_class"].items()},
        "per_label_answered": {k: {**d, "ppv_answered": _r(d["ppv_answered"])}
                               for k, d in metrics.answered_by_label(y, o.label, o.abstained, classes).items()},
        "auroc_delta_sp": _r(auroc),
        "auroc_delta_sp_ci95": [_r(c) for c in ci],
        "auroc_1_minus_sp": _r(auroc_sp),
        "auroc_1_minus_sp_ci95": [_r(c) for c in ci_sp],
        "mean_passes": _r(ps["mean_passes"], 3),
        "passes_correct": _r(ps["passes_correct"], 3),
        "passes_wrong": _r(ps["passes_wrong"], 3),
        "passes_ratio": _r(ps["ratio_wrong_correct"], 3),
        "abstain_rate": _r(sel["abstain_rate"]),
        "accuracy_non_abstained": _r(sel["accuracy"]),
        "aurc": _r(metrics.aurc(o.confidence, correct)),
        "ece": _r(metrics.ece(o.max_prob, correct)),
        "mean_delta_sp": _r(float(np.mean(o.delta_sp))),
        "risk_coverage": _curve(cov, risk),
    }
