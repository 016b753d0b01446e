"""Dropout whose Monte-Carlo masks are a pure function of (window key, pass index, layer, unit).

Standard dropout draws masks from a global RNG, so the same window gets different passes depending on what else was
in its batch. Keyed dropout makes pass ``t`` of window ``k`` reproducible anywhere: batched or one at a time, on CPU
or GPU, in a replay or live. That is what lets a replayed stream overwrite its earlier InfluxDB points instead of
duplicating them, and lets tests compare the batched controller with a per-window oracle on real models.

The masks come from a counter-based hash (SplitMix64 finaliser) evaluated on the device: no host RNG, no sync.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
_UNIT = _signed(0xD1B54A32D192ED03)


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic); a bijection with good avalanche."""
    x = (x ^ _shr(x, 30)) * _MUL1
    x = (x ^ _shr(x, 27)) * _MUL2
    return x ^ _shr(x, 31)


@dataclass(frozen=True)
class PassNoise:
    """Identifies one stochastic pass per window.

    keys: int64[B] window keys (e.g. hash of stream id and sequence number).
    step: int or int64[B], the 1-based pass index.
    """

    keys: Tensor
    step: Tensor | int

    def uniform(self, shape: torch.Size, salt: int) -> Tensor:
        """float32[B, *shape] uniform in [0, 1) from 24 hashed bits per unit."""
        step = torch.as_tensor(self.step, dtype=torch.int64, device=self.keys.device)
        salt_term = _signed((salt * _UNIT) % (1 << 64))
        base = mix64(self.keys.to(torch.int64) + step * _GOLDEN + salt_term)  # [B]
        n = 1
        for d in shape:
            n *= d
        units = torch.arange(n, device=self.keys.device, dtype=torch.int64)
        bits = mix64(base[:, None] + (units[None, :] + 1) * _GOLDEN)
        u = _shr(bits, 40).to(torch.float32) * (1.0 / (1 << 24))
        return u.view(-1, *shape)


class KeyedDropout(nn.Module):
    """Dropout with three modes.

    - training (``self.training`` and no noise): ordinary ``F.dropout`` from the global RNG;
    - deterministic inference (eval, no noise): identity;
    - Monte-Carlo inference (noise given): inverted dropout with keyed masks, whatever the module's mode, so the
      rest of the model (BatchNorm, ...) stays in eval mode.
    """

    def __init__(self, p: float, salt: int) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.salt = salt

    def forward(self, x: Tensor, noise: PassNoise | None = None) -> Tensor:
        if noise is None:
            return F.dropout(x, self.p, training=self.training)
        if self.p == 0.0:
            return x
        keep = noise.uniform(x.shape[1:], self.salt) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, salt={self.salt}"


def window_keys(stream_ids: list[str], seqs: Tensor) -> Tensor:
    """int64[B] keys for windows identified by (stream id, sequence number).

    The stream id is hashed with a stable (not per-process salted) hash so keys agree across workers and restarts.
    """
    names, inverse = np.unique(np.asarray(stream_ids, dtype=object).astype(str), return_inverse=True)
    crc = torch.tensor([zlib.crc32(n.encode()) for n in names], dtype=torch.int64)  # once per distinct stream
    return mix64(crc[torch.from_numpy(inverse.ravel())] * _GOLDEN + seqs.to(torch.int64).cpu())
