"""The interpretive state SP and the safety signal ΔSP (paper, section 3).

For K classes and mean logits z̄: p = softmax(z̄ / T), H(p) = −Σ p·log p with p clamped at 1e-9,
SP = 1 − H(p) / log K ∈ [0, 1] (1 = certain, 0 = uniform), ΔSP = |SP* − SP|.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

P_CLAMP = 1e-9


def probabilities(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(logits / T) over the last axis; logits: float[..., K]."""
    return torch.softmax(logits / temperature, dim=-1)


def normalized_entropy(p: Tensor) -> Tensor:
    """H(p) / log K for p: float[..., K] (K ≥ 2); p is clamped at 1e-9 before the log."""
    k = p.shape[-1]
    h = -(p * p.clamp_min(P_CLAMP).log()).sum(dim=-1)
    return h / math.log(k)


def interpretive_state(mean_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """SP = 1 − H(softmax(z̄/T)) / log K; mean_logits: float[..., K] → float[...].

    Uniform logits give SP = 0; p = (0.9, 0.1) gives 1 − H/log 2 = 1 − 0.325/0.693 ≈ 0.531:

    >>> interpretive_state(torch.zeros(4)).item()
    0.0
    >>> round(interpretive_state(torch.tensor([math.log(9.0), 0.0])).item(), 3)
    0.531
    >>> round(interpretive_state(torch.tensor([math.log(9.0), 0.0]), temperature=2.0).item(), 3)  # p = (0.75, 0.25)
    0.189
    """
    return 1.0 - normalized_entropy(probabilities(mean_logits, temperature))


def delta_sp(sp: Tensor, sp_star: float) -> Tensor:
    """ΔSP = |SP* − SP|, elementwise.

    >>> delta_sp(torch.tensor([0.5, 0.85, 1.0]), 0.85)
    tensor([0.3500, 0.0000, 0.1500])
    """
    return (sp_star - sp).abs()
