"""Batched SCI engine: B windows sample Monte-Carlo passes together until each one stops or abstains.

All windows advance in lock step; after pass t the policy decides for the windows still active and only those are
sampled again. Statistics, SP, ΔSP and decisions stay on the device; the only host syncs are one per pass (the
size of the shrinking active set) and one at the end (the result).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from controller.interpretive_state import delta_sp, normalized_entropy
from controller.policies import PassStats, Policy
from controller.reasons import ABSTAIN_REASONS, Reason

# sampler(idx: int64[n] window indices, t: 1-based pass index) -> logits float[n, K] of pass t for those windows
Sampler = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class SciConfig:
    """temperature T for softmax(z̄/T); t_max passes at most; sp_star is SP* of ΔSP = |SP* − SP|."""

    temperature: float = 1.0
    t_max: int = 25
    sp_star: float = 0.85

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.t_max < 1:
            raise ValueError(f"t_max must be ≥ 1, got {self.t_max}")


@dataclass(frozen=True)
class SciResult:
    """Per-window outcome (host numpy arrays, B windows, K classes).

    label int64[B] (argmax of probs, reported even when abstained), probs float32[B, K] = softmax(z̄/T) at the last
    pass, sp float32[B], delta_sp float32[B], passes int64[B], abstained bool[B], reason int64[B] (a Reason code).
    Filled by ``controller.decision.decide`` (None straight out of ``run_sci``): novelty float32[B] (NaN without a
    novelty model), quality int64[B] (``controller.quality.QualityFlag`` bits, 0 = passed), confidence float32[B]
    (the risk rule's score; NaN without one).
    """

    label: np.ndarray
    probs: np.ndarray
    sp: np.ndarray
    delta_sp: np.ndarray
    passes: np.ndarray
    abstained: np.ndarray
    reason: np.ndarray
    novelty: np.ndarray | None = None
    quality: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def reason_names(self) -> list[str]:
        return [Reason(r).label for r in self.reason.tolist()]

    def __len__(self) -> int:
        return len(self.label)


def run_sci(sampler: Sampler, n_windows: int, n_classes: int, policy: Policy, config: SciConfig,
            device: torch.device | str = "cpu") -> SciResult:
    """Run the controller over ``n_windows`` windows whose passes come from ``sampler``."""
    dev = torch.device(device)
    b, k, temp = n_windows, n_classes, config.temperature
    logit_sum = torch.zeros(b, k, device=dev)
    prob_sum = torch.zeros(b, k, device=dev)
    prob_outer = torch.zeros(b, k, k, device=dev)
    sp_hist = torch.full((b, 3), float("nan"), device=dev)
    passes = torch.zeros(b, dtype=torch.int64, device=dev)
    reason = torch.full((b,), Reason.SAMPLING, dtype=torch.int64, device=dev)
    idx = torch.arange(b, device=dev)

    for t in range(1, config.t_max + 1):
        if idx.numel() == 0:
            break
        z = sampler(idx, t).to(dev, torch.float32)
        p = torch.softmax(z / temp, dim=1)
        logit_sum[idx] += z
        prob_sum[idx] += p
        prob_outer[idx] += p[:, :, None] * p[:, None, :]
        mean_probs = torch.softmax(logit_sum[idx] / (t * temp), dim=1)
        sp_hist[idx] = torch.cat([1.0 - normalized_entropy(mean_probs)[:, None], sp_hist[idx, :2]], dim=1)
        stats = PassStats(t, sp_hist[idx], prob_sum[idx], prob_outer[idx], mean_probs)
        r = policy.decide(stats)
        if t == config.t_max:
            r = torch.where(r == Reason.SAMPLING, Reason.BUDGET, r)
        passes[idx] = t
        reason[idx] = r
        idx = idx[r == Reason.SAMPLING]  # the one host sync per pass

    probs = torch.softmax(logit_sum / (passes.clamp_min(1)[:, None] * temp), dim=1)
    sp = sp_hist[:, 0]
    abstained = torch.isin(reason, torch.tensor([int(r) for r in ABSTAIN_REASONS], device=dev))
    out = [probs.argmax(1), probs, sp, delta_sp(sp, config.sp_star), passes, abstained, reason]
    label, probs_h, sp_h, dsp_h, passes_h, abst_h, reason_h = (x.cpu().numpy() for x in out)
    return SciResult(label, probs_h, sp_h, dsp_h, passes_h, abst_h, reason_h)


def replay_sampler(logits: Tensor) -> Sampler:
    """Sampler over precomputed passes: logits float[B, T, K]; pass t of window i is logits[i, t−1]."""
    return lambda idx, t: logits[idx, t - 1]
