"""`sci-monitor evaluate-shift`: how the committed checkpoint and its controller behave on shifted test windows.

For every shift (``models.data.shift``) and every score — 1 − max prob (one plain pass), 1 − SP (mean of T_max
passes), MC mutual information (T_max passes), novelty, and the controller's own score (gated windows first) —
the AUROC of shifted vs in-distribution test windows (the controller's score ranks gated windows first, then
1 − its confidence); the controller's escalation rate, the share of windows per reason and per failed input check
(``checks``, e.g. ``polarity``: the stream's template points the wrong way); the **answered-wrong rate**
(share of the shifted windows the controller answers and gets wrong) beside the plain pass's (it answers all).
A shift is *safe* when the model is robust to it (answered-wrong ≤ 1.5 × the in-distribution rate) or the
controller catches it (answered-wrong ≤ a third of the plain pass's on the same windows).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from controller import metrics
from controller.calibration import decider_from_card
from controller.decision import Decider
from controller.evaluation import TEST_KEY_OFFSET
from controller.methods import controller
from controller.passes import sample_passes
from controller.quality import QualityFlag
from controller.reasons import Reason
from models.checkpoint import CHECKPOINT_DIR, load_checkpoint
from models.training import Arrays

Log = Callable[[str], None]
SCORES = ("1_minus_max_prob", "1_minus_sp", "mutual_information", "novelty", "controller")


def _r(x: float, nd: int = 5) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def condition(model: torch.nn.Module, decider: Decider, data: Arrays, key_offset: int,
              device: torch.device | str) -> dict[str, np.ndarray]:
    """Per-window scores and outcomes of one condition (N windows)."""
    p = sample_passes(model, data, decider.config.t_max, device, key_offset=key_offset)
    temp = decider.config.temperature
    det = torch.softmax(p.deterministic / temp, dim=1)
    mc = torch.softmax(p.mc / temp, dim=2)  # per-pass probabilities [N, T, K]
    mean_p = torch.softmax(p.mc.mean(1) / temp, dim=1)
    k = mean_p.shape[1]

    def ent(q: torch.Tensor) -> torch.Tensor:
        return -(q * q.clamp_min(1e-9).log()).sum(-1)

    out, r = controller(p, decider)
    return {
        "1_minus_max_prob": (1 - det.max(1).values).numpy(),
        "1_minus_sp": (ent(mean_p) / np.log(k)).numpy(),
        "mutual_information": (ent(mc.mean(1)) - ent(mc).mean(1)).numpy(),
        "novelty": r.novelty,
        "controller": np.where(r.passes == 0, 2.0, out.score),  # the decision's order: gated windows first
        "abstained": r.abstained,
        "wrong": r.label != p.y,
        "det_wrong": det.argmax(1).numpy() != p.y,
        "reason": r.reason,
        "quality": r.quality,
    }


def _rates(c: dict[str, np.ndarray]) -> dict[str, Any]:
    answered = ~c["abstained"]
    checks = {f.name.lower(): _r(float(np.mean((c["quality"] & int(f)) != 0)), 4) for f in QualityFlag}
    return {"windows": len(c["wrong"]), "escalation_rate": _r(c["abstained"].mean()),
            "answered_wrong_rate": _r((answered & c["wrong"]).mean()),
            "deterministic_answered_wrong_rate": _r(c["det_wrong"].mean()),
            "checks": {k: v for k, v in checks.items() if v}}


def _shift_entry(ref: dict[str, np.ndarray], sh: dict[str, np.ndarray], ref_rates: dict[str, Any]) -> dict[str, Any]:
    is_shift = np.r_[np.zeros(len(ref["wrong"]), bool), np.ones(len(sh["wrong"]), bool)]
    scores = {s: {"auroc": _r(metrics.auroc(np.r_[ref[s], sh[s]], is_shift)) if np.isfinite(sh[s]).all() else None}
              for s in SCORES}
    rates = _rates(sh)
    robust = rates["answered_wrong_rate"] <= 1.5 * ref_rates["answered_wrong_rate"]
    caught = rates["answered_wrong_rate"] <= rates["deterministic_answered_wrong_rate"] / 3
    reasons = {Reason(int(k)).label: _r(float(np.mean(sh["reason"] == k)), 4) for k in np.unique(sh["reason"])}
    return {**rates, "scores": scores, "reasons": reasons, "robust": bool(robust), "caught": bool(caught),
            "safe": bool(robust or caught)}


def evaluate_shift(dataset: str, json_out: Path | None = None, plots_dir: Path | None = None,
                   device: torch.device | str = "cpu", log: Log = lambda _: None,
                   checkpoint_dir: Path = CHECKPOINT_DIR) -> dict[str, Any]:
    """The shift benchmark of ``dataset`` ("mitdb" | "cwru"); see the module docstring and ``models.data.shift``."""
    from models.data import shift

    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, card = load_checkpoint(dataset, device, checkpoint_dir)
    decider = decider_from_card(card, checkpoint_dir)
    ref_data, shifts = shift.ecg_shifts() if dataset == "mitdb" else shift.vibration_shifts()
    log(f"[{dataset}] {len(ref_data)} reference windows, {len(shifts)} shifts")

    def offset(i: int) -> int:
        return TEST_KEY_OFFSET + (i + 1) * (1 << 32)

    ref = condition(model, decider, ref_data, offset(0), device)
    ref_rates = _rates(ref)
    report: dict[str, Any] = {"dataset": dataset, "checkpoint": card.name, "split": f"test — {card.split}",
                              "in_distribution": ref_rates, "shifts": {}}
    for i, (name, data) in enumerate(shifts.items(), start=1):
        report["shifts"][name] = _shift_entry(ref, condition(model, decider, data, offset(i), device), ref_rates)
        log(f"[{dataset}] {name}: {report['shifts'][name]['answered_wrong_rate']} answered wrong")
    if dataset == "cwru":
        ls_model, ls_card = load_checkpoint("cwru-loadshift", device, checkpoint_dir)
        ls_decider = decider_from_card(ls_card, checkpoint_dir)
        ls_ref_data, ls_data = shift.load_shift_frames()
        ls_ref = condition(ls_model, ls_decider, ls_ref_data, offset(100), device)
        ls_ref_rates = _rates(ls_ref)
        entry = _shift_entry(ls_ref, condition(ls_model, ls_decider, ls_data, offset(101), device), ls_ref_rates)
        report["shifts"]["load_shift"] = {**entry, "checkpoint": "cwru-loadshift", "in_distribution": ls_ref_rates}
    report["seconds"] = round(time.perf_counter() - start, 1)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {json_out}")
    if plots_dir:
        from controller.plots import plot_shift

        log(f"wrote {plot_shift(report, plots_dir / f'{dataset}_shift.png')}")
    return report
