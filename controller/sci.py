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

from controller.decision import Decider, Gate, decide, evidence
from controller.engine import SciConfig, SciResult
from controller.policies import Policy
from models.architectures import McModel
from models.checkpoint import CHECKPOINT_DIR, ModelCard
from models.controller_card import RiskRule
from models.keyed_dropout import PassNoise


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
        ev = evidence(self.model, xt, at)

        def sampler(idx: Tensor, t: int) -> Tensor:
            return self.model.head(ev.trunk[idx], PassNoise(kt[idx], t))

        return decide(ev, sampler, self.decider, self.device)
