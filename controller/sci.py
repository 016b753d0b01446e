"""SciController: one MC-dropout model on its device, wrapped by a stop policy.

The trunk runs once per window; only the stochastic head is resampled, with keyed dropout so pass t of a window is
the same whatever batch it is in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from controller.engine import SciConfig, SciResult, run_sci
from controller.policies import Policy
from models.architectures import McModel
from models.keyed_dropout import PassNoise

# bytes of trunk features per head call: larger calls spill out of the CPU caches into fresh pages (a 6 MB call ran
# 3× slower per row than 3 MB calls on the paper-bearings head), smaller ones pay more per-call overhead
HEAD_CALL_BYTES = 2 << 20
# feature values per round of drawn-ahead passes: a round's fixed cost (a few hundred µs of op overhead on CPU) is
# worth about this many rows × features of head work, so wide heads draw fewer passes ahead than narrow ones
BLOCK_FEATURES = 1 << 14


def _as_tensor(a: np.ndarray | Tensor | None, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    if a is None:
        return None
    return torch.as_tensor(a, dtype=dtype).to(device, non_blocking=True)


class SciController:
    """Runs the SCI controller for batches of windows of one model.

    model: an McModel (moved to ``device`` and put in eval mode once, here); policy and config: the stop rule,
    temperature, budget and SP*.
    """

    def __init__(self, model: McModel, policy: Policy, config: SciConfig, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.policy = policy
        self.config = config
        self._n_classes: int | None = None

    @torch.inference_mode()
    def classify(self, x: np.ndarray | Tensor, aux: np.ndarray | Tensor | None, keys: np.ndarray | Tensor
                 ) -> SciResult:
        """x: float32[B, L]; aux: float32[B, A] or None; keys: int64[B] window keys (see keyed_dropout)."""
        xt = _as_tensor(x, self.device, torch.float32)
        at = _as_tensor(aux, self.device, torch.float32)
        kt = _as_tensor(keys, self.device, torch.int64)
        h = self.model.trunk(xt, at)
        if self._n_classes is None:
            self._n_classes = self.model.head(h[:1]).shape[1]
        rows_per_call = max(2, HEAD_CALL_BYTES // (h[0].numel() * h.element_size()))
        block_rows = max(32, BLOCK_FEATURES // h[0].numel())

        def sampler(idx: Tensor, t: int | Tensor) -> Tensor:
            n_calls = -(-idx.numel() // rows_per_call)
            if n_calls == 1:
                return self.model.head(h[idx], PassNoise(kt[idx], t))
            steps = t if isinstance(t, Tensor) else torch.full_like(idx, t)
            return torch.cat([self.model.head(h[i], PassNoise(kt[i], s))
                              for i, s in zip(idx.tensor_split(n_calls), steps.tensor_split(n_calls), strict=True)])

        return run_sci(sampler, xt.shape[0], self._n_classes, self.policy, self.config, self.device, block_rows)

    @torch.inference_mode()
    def deterministic_logits(self, x: np.ndarray | Tensor, aux: np.ndarray | Tensor | None) -> Tensor:
        """One plain forward pass (dropout off): logits float32[B, K] on the device."""
        return self.model(_as_tensor(x, self.device, torch.float32), _as_tensor(aux, self.device, torch.float32))
