"""Batched SCI engine: B windows sample Monte-Carlo passes together until each one stops or abstains.

Keyed passes are pure functions of (window key, pass index), so they can be drawn ahead: each round samples a block
of the next m passes for every window still active in one sampler call, then applies the stop rule to each prefix
(pass t, t+1, ...) in order; a window ends at the first pass its policy stops or abstains at, exactly as if its
passes had come one at a time (running sums are accumulated pass by pass in float32, like a one-pass-at-a-time
loop, so decisions are bit-identical to it). Passes drawn beyond a window's stop are discarded. Block sizes grow as
the active set shrinks (about ``block_rows`` sampled rows per round), so a batch needs a handful of rounds instead
of one per pass up to the slowest window. Statistics, SP, ΔSP and decisions stay on the device; the only host syncs
are one per round (the size of the remaining active set) and the result (:func:`run_sci_on_device` leaves it on the
device).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from controller.interpretive_state import delta_sp, normalized_entropy
from controller.policies import PassStats, Policy
from controller.reasons import ABSTAIN_REASONS, Reason

# sampler(idx: int64[n] window indices, t: 1-based pass index, an int or int64[n] per row) -> logits float[n, K]:
# row j is pass t (or t[j]) of window idx[j]; idx may repeat a window (several of its passes in one call)
Sampler = Callable[[Tensor, int | Tensor], Tensor]
BLOCK_ROWS = 1024  # rows per round the block size aims at: a round's fixed cost is worth about this many rows on CPU


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


def block_size(t: int, n_active: int, t_min: int, t_max: int, block_rows: int = BLOCK_ROWS) -> int:
    """Passes to draw ahead after pass ``t`` for ``n_active`` windows: about ``block_rows`` rows, never past t_max.

    The first block reaches at least the policy's t_min (no window can stop earlier).

    >>> block_size(0, 64, t_min=2, t_max=25), block_size(16, 10, t_min=2, t_max=25), block_size(0, 1024, 4, 25)
    (16, 9, 4)
    """
    m = max(1, -(-block_rows // max(n_active, 1)))
    if t == 0:
        m = max(m, t_min)
    return min(m, t_max - t)


def run_sci(sampler: Sampler, n_windows: int, n_classes: int, policy: Policy, config: SciConfig,
            device: torch.device | str = "cpu", block_rows: int = BLOCK_ROWS) -> SciResult:
    """Run the controller over ``n_windows`` windows whose passes come from ``sampler``.

    ``block_rows`` only trades wasted passes (drawn beyond a stop) for fewer rounds; results do not depend on it.
    """
    probs, sp, passes, reason = run_sci_on_device(sampler, n_windows, n_classes, policy, config, device, block_rows)
    out = [probs.argmax(1), probs, sp, delta_sp(sp, config.sp_star), passes, is_abstention(reason), reason]
    label, probs_h, sp_h, dsp_h, passes_h, abst_h, reason_h = (x.cpu().numpy() for x in out)
    return SciResult(label, probs_h, sp_h, dsp_h, passes_h, abst_h, reason_h)


def is_abstention(reason: Tensor) -> Tensor:
    """bool[B]: which Reason codes int64[B] are abstentions (escalations)."""
    return torch.isin(reason, _abstain_codes(reason.device))


@functools.lru_cache(maxsize=8)
def _abstain_codes(device: torch.device) -> Tensor:
    """int64[R] the abstaining Reason codes, made once per device (not copied to a GPU at every call)."""
    return torch.tensor([int(r) for r in ABSTAIN_REASONS], device=device)


def run_sci_on_device(sampler: Sampler, n_windows: int, n_classes: int, policy: Policy, config: SciConfig,
                      device: torch.device | str = "cpu", block_rows: int = BLOCK_ROWS
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`run_sci` with its results left on the device: probs float32[B, K] = softmax(z̄/T) at the last pass,
    sp float32[B], passes int64[B], reason int64[B] (a Reason code)."""
    dev = torch.device(device)
    b, k, temp, t_max = n_windows, n_classes, config.temperature, config.t_max
    # one packed row of state per window: Σz (K) | Σp (K) | Σppᵀ (K²) | SP(t−2), SP(t−1), SP(t) | t | reason
    n_sums = 2 * k + k * k
    c_sp, c_t, c_reason = n_sums, n_sums + 3, n_sums + 4
    state = torch.zeros(b, n_sums + 5, device=dev)
    state[:, c_sp : c_sp + 3] = float("nan")
    # float32(t·T) for t = 1..t_max, the divisor of the mean logits (computed as the Python float t * T was)
    denom = torch.tensor([t * temp for t in range(1, t_max + 1)], dtype=torch.float32, device=dev)[:, None, None]
    t_min = int(getattr(policy, "t_min", 1))
    idx = torch.arange(b, device=dev)
    t0 = 0
    while t0 < t_max and (n := idx.numel()) > 0:
        m = block_size(t0, n, t_min, t_max, block_rows)
        t_rows = torch.arange(t0 + 1, t0 + m + 1, device=dev).repeat_interleave(n)  # pass-major: t0+1 for all, ...
        z = sampler(idx.repeat(m), t_rows).to(dev, torch.float32).view(m, n, k)
        p = torch.softmax(z / temp, dim=2)
        obs = torch.cat([z, p, (p[:, :, :, None] * p[:, :, None, :]).view(m, n, k * k)], dim=2)
        prev = state[idx]
        # running sums pass by pass in float32, like a one-pass-at-a-time loop (cumsum accumulates differently)
        run = [prev[:, :n_sums]]
        for j in range(m):
            run.append(run[-1] + obs[j])
        sums = torch.stack(run[1:])  # [m, n, n_sums]
        mean_probs = torch.softmax(sums[:, :, :k] / denom[t0 : t0 + m], dim=2)
        sp_new = 1.0 - normalized_entropy(mean_probs)  # [m, n]
        seq = torch.cat([prev[:, c_sp : c_sp + 3].T, sp_new])  # [3 + m, n]: SP(t0−2), SP(t0−1), SP(t0), SP(t0+1)...
        sp_hist = torch.stack([seq[1:-2], seq[2:-1], seq[3:]], dim=2)  # [m, n, 3] oldest first
        flat = sums.view(m * n, n_sums)  # the policy's views below are strided, not copies
        r = policy.decide(PassStats(t_rows, sp_hist.flip(2).view(m * n, 3), flat[:, k : 2 * k],
                                    flat[:, 2 * k :].view(m * n, k, k), mean_probs.view(m * n, k))).view(m, n)
        if t0 + m == t_max:
            r[-1] = torch.where(r[-1] == Reason.SAMPLING, Reason.BUDGET, r[-1])
        done = r != Reason.SAMPLING
        ended = done.any(0)
        last = torch.where(ended, done.to(torch.int8).argmax(0), m - 1)  # first decided pass, else the block's end
        block = torch.cat([sums, sp_hist, t_rows.view(m, n, 1), r.view(m, n, 1)], dim=2)
        state[idx] = block[last, torch.arange(n, device=dev)]
        idx = idx[~ended]  # the one host sync per round
        t0 += m

    passes, reason = state[:, c_t].long(), state[:, c_reason].long()
    probs = torch.softmax(state[:, :k] / (passes.clamp_min(1)[:, None] * temp), dim=1)
    return probs, state[:, c_sp + 2], passes, reason


def replay_sampler(logits: Tensor) -> Sampler:
    """Sampler over precomputed passes: logits float[B, T, K]; pass t of window i is logits[i, t−1]."""
    return lambda idx, t: logits[idx, t - 1]
