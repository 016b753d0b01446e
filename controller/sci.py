"""SciController: one MC-dropout model on its device, wrapped by the controller's decision (gate, policy, risk rule).

The trunk runs once per window; only the stochastic head is resampled, with keyed dropout so pass t of a window is
the same whatever batch it is in. ``classify`` calls ``controller.decision.decide``, the same function `evaluate`
and `evaluate-shift` use on precomputed passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from controller.decision import Decider, Gate, decide, evidence, trunk_features
from controller.engine import SciConfig, SciResult
from controller.policies import Policy
from models.architectures import McModel
from models.checkpoint import CHECKPOINT_DIR, ModelCard
from models.controller_card import RiskRule
from models.keyed_dropout import PassNoise

# How big a head call and a round of drawn-ahead passes are, per device type (results never depend on them).
# CPU: bytes of trunk features per head call: larger calls spill out of the CPU caches into fresh pages (a 6 MB
# call ran 3× slower per row than 3 MB calls on the paper-bearings head), smaller ones pay more per-call overhead.
# Feature values per round and per head: a round's fixed cost (a few hundred µs of op overhead per head on CPU) is
# worth about this many rows × features of that head's work, so wide heads draw fewer passes ahead than narrow
# ones; an ensemble's heads each add their fixed cost and their width, so its rounds are sized by one member's width
# (sized by the whole width, 56 instead of 170 rows per round, the 3-member mitdb ensemble took 329 instead of 301
# µs per window in 64-window batches and 231 instead of 215 in 256-window ones).
# CUDA: a round costs kernel launches and a host sync whatever its size, and rows are nearly free, so a batch draws
# all its passes in one round (64 MB of features per round and per head call bound the memory of huge batches):
# on an H100 (2026-11-22), the CPU sizes ran the mitdb controller at 13.2k windows/s in 1024-window batches, while
# all 25 passes in one call (fixed-T) ran at 138.7k.
HEAD_CALL_BYTES = {"cpu": 2 << 20, "cuda": 64 << 20}
BLOCK_FEATURES = {"cpu": 1 << 14, "cuda": 1 << 24}
# Windows per trunk call. CPU: a 1024-window batch in one call ran the trunk at 49 µs per window on paper-bearings
# and 12–13 µs in calls of 64–256 (its activations spill out of the caches; cwru 36 vs 30, mitdb 110 vs 94 µs at
# 256; 2026-11-23, one thread); the trunk's features are the same bit for bit in calls of 64 windows or more.
TRUNK_ROWS = {"cpu": 256, "cuda": None}


def _as_tensor(a: np.ndarray | Tensor | None, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    if a is None:
        return None
    return torch.as_tensor(a, dtype=dtype).to(device, non_blocking=True)


class SciController:
    """Runs the controller for batches of windows of one model.

    model: an McModel (moved to ``device`` and put in eval mode once, here); policy and config: the stop rule,
    temperature, budget and SP*; gate: input checks and novelty gate (default: none); risk: the risk-controlled
    abstention rule (default: none, the policy alone abstains). :meth:`from_card` builds all of it from a card.
    """

    def __init__(self, model: McModel, policy: Policy, config: SciConfig, device: torch.device | str = "cpu",
                 gate: Gate | None = None, risk: RiskRule | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        gate = (gate or Gate()).to(self.device)
        self.decider = Decider(policy, config, gate, risk)

    @classmethod
    def from_card(cls, model: McModel, card: ModelCard, device: torch.device | str = "cpu",
                  directory: Path = CHECKPOINT_DIR) -> SciController:
        """The controller a checkpoint's card prescribes (its novelty model is read from ``directory``)."""
        from controller.calibration import decider_from_card

        d = decider_from_card(card, directory)
        return cls(model, d.policy, d.config, device, d.gate, d.risk)

    @property
    def policy(self) -> Policy:
        return self.decider.policy

    @property
    def config(self) -> SciConfig:
        return self.decider.config

    @torch.inference_mode()
    def classify(self, x: np.ndarray | Tensor, aux: np.ndarray | Tensor | None, keys: np.ndarray | Tensor
                 ) -> SciResult:
        """x: float32[B, L]; aux: float32[B, A] or None; keys: int64[B] window keys (see keyed_dropout)."""
        xt = _as_tensor(x, self.device, torch.float32)
        at = _as_tensor(aux, self.device, torch.float32)
        kt = _as_tensor(keys, self.device, torch.int64)
        kind = self._kind
        ev = evidence(self.model, xt, at, signal=self.decider.gate.reads_signal, trunk_rows=TRUNK_ROWS[kind])
        h = ev.trunk
        rows_per_call = max(2, HEAD_CALL_BYTES[kind] // (h[0].numel() * h.element_size()))
        block_rows = max(32, BLOCK_FEATURES[kind] * self.model.n_heads // h[0].numel())

        def sampler(idx: Tensor, t: int | Tensor) -> Tensor:
            n_calls = -(-idx.numel() // rows_per_call)
            if n_calls == 1:
                return self.model.head(h[idx], PassNoise(kt[idx], t))
            steps = t if isinstance(t, Tensor) else torch.full_like(idx, t)
            return torch.cat([self.model.head(h[i], PassNoise(kt[i], s))
                              for i, s in zip(idx.tensor_split(n_calls), steps.tensor_split(n_calls), strict=True)])

        return decide(ev, sampler, self.decider, self.device, block_rows)

    @torch.inference_mode()
    def trunk(self, x: np.ndarray | Tensor, aux: np.ndarray | Tensor | None) -> Tensor:
        """Trunk features float32[B, D] on the device, in the controller's trunk calls (``TRUNK_ROWS``)."""
        xt, at = _as_tensor(x, self.device, torch.float32), _as_tensor(aux, self.device, torch.float32)
        return trunk_features(self.model, xt, at, TRUNK_ROWS[self._kind])

    @torch.inference_mode()
    def deterministic_logits(self, x: np.ndarray | Tensor, aux: np.ndarray | Tensor | None) -> Tensor:
        """One plain forward pass (dropout off): logits float32[B, K] on the device."""
        return self.model.head(self.trunk(x, aux))

    @property
    def _kind(self) -> str:
        """The device type the sizes above are chosen for."""
        return "cuda" if self.device.type == "cuda" else "cpu"
