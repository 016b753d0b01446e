"""Monte-Carlo passes of a whole data split, drawn once and shared by every method being compared.

Because dropout masks are keyed by (window, pass), the passes replayed from here are exactly the passes the live
controller would draw for the same window keys, so offline results carry over to streaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from controller.decision import Evidence, evidence
from controller.quality import SignalStats
from models.architectures import McModel
from models.keyed_dropout import PassNoise, mix64
from models.training import Arrays


@dataclass(frozen=True)
class SplitPasses:
    """deterministic: float32[N, K] logits of the plain pass; mc: float32[N, T, K] logits of passes 1..T; y int64[N];
    trunk: float32[N, D] trunk features; signal: input statistics (the evidence the gate needs)."""

    deterministic: Tensor
    mc: Tensor
    y: np.ndarray
    trunk: Tensor
    signal: SignalStats

    def evidence(self) -> Evidence:
        return Evidence(self.deterministic, self.trunk, self.signal)

    def subset(self, idx: np.ndarray) -> SplitPasses:
        i = torch.as_tensor(idx, dtype=torch.int64)
        return SplitPasses(self.deterministic[i], self.mc[i], self.y[idx], self.trunk[i], self.signal.index(i))


def eval_keys(n: int, offset: int = 0) -> Tensor:
    """int64[n] window keys for offline splits (distinct from stream keys by construction of the offset)."""
    return mix64(torch.arange(n, dtype=torch.int64) + offset)


@torch.inference_mode()
def sample_passes(model: McModel, data: Arrays, t_max: int, device: torch.device | str = "cpu",
                  chunk: int = 4096, key_offset: int = 0) -> SplitPasses:
    """Run the trunk once per window, the head once without dropout and T times with keyed dropout, in chunks of
    ``chunk`` windows; keep the trunk features and input statistics for the gate."""
    model = model.to(device).eval()
    keys = eval_keys(len(data), key_offset)
    det, mc, trunk, sig = [], [], [], []
    for i in range(0, len(data), chunk):
        x = torch.as_tensor(data.x[i : i + chunk], dtype=torch.float32, device=device)
        aux = None if data.aux is None else torch.as_tensor(data.aux[i : i + chunk], dtype=torch.float32,
                                                             device=device)
        k = keys[i : i + chunk].to(device)
        ev = evidence(model, x, aux)
        h = ev.trunk
        det.append(ev.deterministic.cpu())
        trunk.append(h.cpu())
        sig.append(ev.signal.to("cpu"))
        mc.append(torch.stack([model.head(h, PassNoise(k, t)) for t in range(1, t_max + 1)], dim=1).cpu())
    return SplitPasses(torch.cat(det), torch.cat(mc), np.asarray(data.y, dtype=np.int64), torch.cat(trunk),
                       SignalStats.cat(sig))
