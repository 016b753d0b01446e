"""Stop rules of the SCI controller, vectorized over the windows still sampling.

A policy sees the running statistics of the active windows after pass ``t`` and returns, per row, one of
a :class:`~controller.reasons.Reason` code: ``SAMPLING`` (continue), a stop reason, or an abstain reason. The engine
abstains on every window still undecided at ``t_max`` (reason ``budget``), so policies only express their own rule.
``t`` is one pass index for all rows, or int64[n] (one per row) when the engine decides a block of drawn-ahead
passes in one call: policies are elementwise in the rows, and their arithmetic gives the same float32 bits either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from controller.reasons import Reason


@dataclass(frozen=True)
class PassStats:
    """Running statistics of n rows (a window after pass t) on the controller's device.

    t: int, or int64[n] the pass index of each row.
    sp: float[n, 3] — SP(t), SP(t−1), SP(t−2) (entries older than the first pass are NaN).
    prob_sum: float[n, K] — Σ_i softmax(z_i / T) over the passes so far.
    prob_outer: float[n, K, K] — Σ_i p_i p_iᵀ (second moments, for variances of probability gaps).
    mean_probs: float[n, K] — softmax(z̄_t / T), the prediction.
    """

    t: int | Tensor
    sp: Tensor
    prob_sum: Tensor
    prob_outer: Tensor
    mean_probs: Tensor


class Policy(Protocol):
    name: str
    t_min: int

    def decide(self, s: PassStats) -> Tensor:
        """int64[n] reason codes: ``SAMPLING`` to continue, otherwise the reason the window is done."""
        ...


def _sampling(s: PassStats) -> Tensor:
    return torch.full((s.sp.shape[0],), Reason.SAMPLING, dtype=torch.int64, device=s.sp.device)


def _reached(s: PassStats, t_min: int) -> bool | Tensor:
    """t ≥ t_min: a Python bool for one pass index, bool[n] for per-row pass indices."""
    return s.t >= t_min


def _too_early(ready: bool | Tensor) -> bool:
    return isinstance(ready, bool) and not ready


@dataclass(frozen=True)
class PaperPlateau:
    """The paper's rule: stop when t ≥ t_min, |SP(t) − SP(t−2)| < ε and SP(t) > SP_floor.

    With ``abstain_floor`` set, a window whose SP is still below it at t_min abstains early (reason ``low_sp``).
    """

    name: ClassVar[str] = "paper"
    eps: float = 0.005
    sp_floor: float = 0.8
    t_min: int = 4
    abstain_floor: float | None = None

    def decide(self, s: PassStats) -> Tensor:
        reason = _sampling(s)
        ready = _reached(s, max(self.t_min, 3))
        if _too_early(ready):
            return reason
        sp_now = s.sp[:, 0]
        plateau = ((sp_now - s.sp[:, 2]).abs() < self.eps) & (sp_now > self.sp_floor) & ready
        reason = torch.where(plateau, Reason.PLATEAU, reason)
        if self.abstain_floor is not None:
            reason = torch.where(~plateau & (sp_now < self.abstain_floor) & ready, Reason.LOW_SP, reason)
        return reason


@dataclass(frozen=True)
class Threshold:
    """Continue while SP < SP* (and t < t_max); stop as soon as SP ≥ SP* once t ≥ t_min."""

    name: ClassVar[str] = "threshold"
    sp_star: float = 0.85
    t_min: int = 2

    def decide(self, s: PassStats) -> Tensor:
        reason = _sampling(s)
        ready = _reached(s, self.t_min)
        if _too_early(ready):
            return reason
        return torch.where((s.sp[:, 0] >= self.sp_star) & ready, Reason.THRESHOLD, reason)


@dataclass(frozen=True)
class SeparationBound:
    """Stop once the top class is separated from the runner-up with confidence.

    Per pass i the gap d_i = p_i[a] − p_i[b] between the current top class a and runner-up b (of the mean
    prediction) is observed. With mean d̄ and unbiased variance s² over t passes, stop when the lower confidence
    bound d̄ − z·s/√t exceeds ``margin``: more passes would almost surely not flip the label. Windows whose passes
    disagree keep sampling and, at the budget, abstain. Needs t ≥ t_min ≥ 2 for a variance.
    """

    name: ClassVar[str] = "bound"
    z: float = 2.0
    margin: float = 0.0
    t_min: int = 3

    def decide(self, s: PassStats) -> Tensor:
        reason = _sampling(s)
        ready = _reached(s, max(self.t_min, 2))
        if _too_early(ready):
            return reason
        t = s.t
        if isinstance(t, int):
            t_k, t_kk, unbiased = t, t, t / (t - 1)
        else:  # per-row pass indices: the scalar path's float32 values (t/(t−1) in float64, then rounded)
            t_k, t_kk = t[:, None], t[:, None, None]
            unbiased = (t.to(torch.float64) / (t - 1).clamp_min(1).to(torch.float64)).to(torch.float32)
        top2 = s.mean_probs.topk(2, dim=1).indices  # [n, 2]
        a, b = top2[:, 0:1], top2[:, 1:2]
        mean = s.prob_sum / t_k
        gap = (mean.gather(1, a) - mean.gather(1, b)).squeeze(1)
        second = s.prob_outer / t_kk  # E[p pᵀ]
        e_aa = second.gather(1, a[:, :, None].expand(-1, 1, second.shape[2])).squeeze(1)  # [n, K] row a
        e_bb = second.gather(1, b[:, :, None].expand(-1, 1, second.shape[2])).squeeze(1)  # row b
        e_d2 = e_aa.gather(1, a) + e_bb.gather(1, b) - 2 * e_aa.gather(1, b)  # E[(p_a − p_b)²]
        var = (e_d2.squeeze(1) - gap**2).clamp_min(0.0) * unbiased
        separated = (gap - self.z * (var / t).sqrt() > self.margin) & ready
        return torch.where(separated, Reason.SEPARATED, reason)


POLICIES: dict[str, type] = {p.name: p for p in (PaperPlateau, Threshold, SeparationBound)}


def make_policy(name: str, **params: float) -> Policy:
    """Build a policy by name (``paper``, ``threshold``, ``bound``) with keyword parameters.

    >>> make_policy("threshold", sp_star=0.9)
    Threshold(sp_star=0.9, t_min=2)
    >>> make_policy("bound").z
    2.0
    >>> make_policy("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown SCI policy 'nope'; choose one of ['bound', 'paper', 'threshold']
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown SCI policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(**params)
