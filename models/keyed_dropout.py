"""Dropout whose Monte-Carlo masks are a pure function of (window key, pass index, layer, unit).

Standard dropout draws masks from a global RNG, so the same window gets different passes depending on what else was
in its batch. Keyed dropout makes pass ``t`` of window ``k`` reproducible anywhere: batched or one at a time, on CPU
or GPU, in a replay or live. That is what lets a replayed stream overwrite its earlier InfluxDB points instead of
duplicating them, and lets tests compare the batched controller with a per-window oracle on real models.

The masks come from a counter-based hash (SplitMix64 finaliser) evaluated on the device: no host RNG, no sync.
Hashing every unit of every pass dominated the cost of the small heads (about 15 integer tensor ops per unit), so
masks are assembled from a fixed bank instead: one hash per chunk of ``CHUNK`` units picks a row of a bank of
``BANK_ROWS`` pre-drawn Bernoulli rows (already scaled by 1/(1−p)), generated once per (p, device) from the same
hash. A mask then costs one hash per 16 units, one row gather and one multiply. Different chunks, layers and passes
pick their rows independently, so two passes of a window share a chunk's mask with probability 2⁻¹⁶.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

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


CHUNK = 16  # units per bank row (one hash per chunk)
BANK_ROWS = 1 << 16  # rows per bank, indexed by the top 16 bits of a chunk's hash
_BANK_SALT = _signed(0x5CD1B5E3A0C6F7A9)


@functools.lru_cache(maxsize=16)
def mask_bank(p: float, device: torch.device) -> Tensor:
    """float32[BANK_ROWS, CHUNK]: 0 with probability p, else 1/(1−p); a pure function of p (same on every device).

    Entry j is kept iff the top 24 bits of mix64(j·φ + salt), as a uniform in [0, 1), are ≥ p.
    """
    j = torch.arange(BANK_ROWS * CHUNK, dtype=torch.int64, device=device)
    u = _shr(mix64(j * _GOLDEN + _BANK_SALT), 40).to(torch.float32) * (1.0 / (1 << 24))
    return ((u >= p).to(torch.float32) * (1.0 / (1.0 - p))).view(BANK_ROWS, CHUNK)


@functools.lru_cache(maxsize=64)
def _chunk_offsets(salt: int, n_chunks: int, device: torch.device) -> Tensor:
    """int64[n_chunks]: what a layer (salt) and chunk index add to a pass hash before the chunk's own mix."""
    salt_term = _signed((salt * _UNIT) % (1 << 64))
    return (torch.arange(n_chunks, dtype=torch.int64, device=device) + 1) * _GOLDEN + salt_term


@dataclass(frozen=True)
class PassNoise:
    """Identifies one stochastic pass per window.

    keys: int64[B] window keys (e.g. hash of stream id and sequence number).
    step: int or int64[B], the 1-based pass index (per row, so one call can hold several passes of a window).

    A layer's mask is drawn once per noise object and (shape, p, salt) and kept; :meth:`shifted` makes the noises of
    several key shifts (an ensemble's members) draw theirs together.
    """

    keys: Tensor
    step: Tensor | int
    # (stacked noise, rows): this noise's masks are those rows of the stacked noise's (see shifted)
    _view: tuple[PassNoise, slice] | None = field(default=None, repr=False, compare=False)
    _masks: dict[tuple, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @functools.cached_property
    def pass_hash(self) -> Tensor:
        """int64[B] = mix64(key + step·φ), shared by every dropout layer of the pass."""
        step = torch.as_tensor(self.step, dtype=torch.int64, device=self.keys.device)
        return mix64(self.keys.to(torch.int64) + step * _GOLDEN)

    def shifted(self, shifts: Sequence[int]) -> list[PassNoise]:
        """One noise per key shift s (keys + s, wrapping int64: ``shift_keys``), each drawing exactly the masks it
        would draw alone, but all of them together: every layer's masks for all shifts come from one hash and one
        bank gather over the stacked rows, then are sliced (with 3 ensemble members, a third of the ops per pass).
        """
        own, step = self.keys, self.step
        if isinstance(step, Tensor):  # keys and steps broadcast against each other (one window, several passes)
            own, step = torch.broadcast_tensors(own, step.to(own.device))
        b, n = own.shape[0], len(shifts)
        keys = torch.cat([shift_keys(own, s) for s in shifts])
        stacked = PassNoise(keys, step.repeat(n) if isinstance(step, Tensor) else step)
        return [PassNoise(keys[i * b : (i + 1) * b], step, (stacked, slice(i * b, (i + 1) * b))) for i in range(n)]

    def mask(self, shape: torch.Size, p: float, salt: int) -> Tensor:
        """float32[B, *shape] inverted-dropout mask (0 or 1/(1−p)) for the layer identified by ``salt``.

        Unit u of the layer takes column u mod CHUNK of bank row top16(mix64(pass_hash + salt·c + (u // CHUNK + 1)·φ)).
        """
        if self._view is not None:
            stacked, rows = self._view
            return stacked.mask(shape, p, salt)[rows]
        memo = (tuple(shape), p, salt)
        if memo not in self._masks:
            self._masks[memo] = self._draw(shape, p, salt)
        return self._masks[memo]

    def _draw(self, shape: torch.Size, p: float, salt: int) -> Tensor:
        n = 1
        for d in shape:
            n *= d
        n_chunks = -(-n // CHUNK)
        offsets = _chunk_offsets(salt, n_chunks, self.keys.device)
        rows = _shr(mix64(self.pass_hash[:, None] + offsets[None, :]), 48)  # [B, n_chunks] in [0, BANK_ROWS)
        m = mask_bank(p, self.keys.device).index_select(0, rows.view(-1)).view(-1, n_chunks * CHUNK)[:, :n]
        return m if len(shape) == 1 else m.reshape(-1, *shape)


def shift_keys(keys: Tensor, shift: int) -> Tensor:
    """int64[B] keys + shift, wrapping modulo 2⁶⁴ (``shift`` any Python int).

    >>> shift_keys(torch.tensor([2**63 - 1]), 1).item() == -2**63
    True
    """
    return keys.to(torch.int64) + ((shift + (1 << 63)) % (1 << 64) - (1 << 63))


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
        return x * noise.mask(x.shape[1:], self.p, self.salt).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, salt={self.salt}"


def window_keys(stream_ids: list[str], seqs: Tensor) -> Tensor:
    """int64[B] keys for windows identified by (stream id, sequence number).

    The stream id is hashed with a stable (not per-process salted) hash so keys agree across workers and restarts.
    """
    names, inverse = np.unique(np.asarray(stream_ids, dtype=object).astype(str), return_inverse=True)
    crc = torch.tensor([zlib.crc32(n.encode()) for n in names], dtype=torch.int64)  # once per distinct stream
    return mix64(crc[torch.from_numpy(inverse.ravel())] * _GOLDEN + seqs.to(torch.int64).cpu())
