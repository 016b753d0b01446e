"""Per-window reference implementation of the SCI stop rules — a test oracle only, written as plainly as the
paper's scripts: one window, one pass at a time, Python scalars for every decision."""

from __future__ import annotations

import math

import numpy as np

from controller.policies import (
    PaperPlateau,
    SeparationBound,
    Threshold,
)
from controller.reasons import Reason


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _sp(p: np.ndarray) -> float:
    h = -sum(float(pi) * math.log(max(float(pi), 1e-9)) for pi in p)
    return 1.0 - h / math.log(len(p))


def run_one(logits: np.ndarray, policy, temperature: float, t_max: int) -> tuple[int, int, int, float]:
    """logits: float[T, K] passes of one window → (label, passes, reason, sp)."""
    sps: list[float] = []
    per_pass: list[np.ndarray] = []
    for t in range(1, t_max + 1):
        z = logits[:t]
        per_pass.append(_softmax(z[-1] / temperature))
        p = _softmax(z.mean(axis=0) / temperature)
        sp = _sp(p)
        sps.append(sp)
        reason = None
        if isinstance(policy, PaperPlateau) and t >= max(policy.t_min, 3):
            if abs(sp - sps[-3]) < policy.eps and sp > policy.sp_floor:
                reason = Reason.PLATEAU
            elif policy.abstain_floor is not None and sp < policy.abstain_floor:
                reason = Reason.LOW_SP
        elif isinstance(policy, Threshold) and t >= policy.t_min and sp >= policy.sp_star:
            reason = Reason.THRESHOLD
        elif isinstance(policy, SeparationBound) and t >= max(policy.t_min, 2):
            a, b = np.argsort(-p, kind="stable")[:2]
            d = np.array([q[a] - q[b] for q in per_pass])
            if d.mean() - policy.z * d.std(ddof=1) / math.sqrt(t) > policy.margin:
                reason = Reason.SEPARATED
        if reason is None and t == t_max:
            reason = Reason.BUDGET
        if reason is not None:
            return int(np.argmax(p)), t, reason, sp
    raise AssertionError("unreachable")
