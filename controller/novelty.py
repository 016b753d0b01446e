"""Novelty score of a window from its trunk features (computed once per window, no extra MC passes).

Two density models of the training features ``h: float[N, D]`` (the output of ``model.trunk``):

- :class:`GaussianNovelty` — class-conditional Gaussians with one shared covariance (Lee et al. 2018; the feature
  density of DDU, Mukhoti et al. 2021, with a tied covariance): score = min over classes of the squared
  Mahalanobis distance (h − μ_k)ᵀ Σ⁻¹ (h − μ_k). Σ gets a ridge of 1e-6·tr(Σ)/D so dead ReLU units do not make
  it singular.
- :class:`KnnNovelty` — distance to the k-th nearest training feature after L2 normalisation (Sun et al. 2022),
  over a fixed random subset of at most ``KNN_BANK`` training windows.

Which one a checkpoint uses is chosen on validation (``controller.calibration``): the one that best separates
validation windows from label-free proxy outliers made from them (time-reversed and phase-scrambled copies),
transformations that none of the shift benchmark's recipes use. Both state dicts are plain tensors, stored beside
the checkpoint (``NAME.novelty.pt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from controller.quality import band_log_shares, band_shape

KNN_K = 10
KNN_BANK = 10_000
RIDGE = 1e-6
CHUNK = 2048


class NoveltyModel(Protocol):
    method: str

    def score(self, h: Tensor) -> Tensor:
        """float32[B] novelty (higher = less like the training data) of trunk features h: float[B, D]."""
        ...

    def state(self) -> dict[str, Tensor | str]: ...

    def to(self, device: torch.device | str) -> NoveltyModel: ...


@dataclass(frozen=True)
class GaussianNovelty:
    """means float[K, D]; whiten W float[D, D] with ‖(h − μ) W‖² = (h − μ)ᵀ Σ⁻¹ (h − μ)."""

    means: Tensor
    whiten: Tensor
    method: str = "mahalanobis"

    def score(self, h: Tensor) -> Tensor:
        z = h.to(self.whiten.dtype) @ self.whiten  # [B, D]
        mu = self.means.to(self.whiten.dtype) @ self.whiten  # [K, D]
        d2 = (z.pow(2).sum(1, keepdim=True) - 2 * z @ mu.T + mu.pow(2).sum(1)[None, :]).clamp_min(0)
        return d2.min(1).values.to(torch.float32)

    def state(self) -> dict[str, Tensor | str]:
        return {"method": self.method, "means": self.means.cpu(), "whiten": self.whiten.cpu()}

    def to(self, device: torch.device | str) -> GaussianNovelty:
        return GaussianNovelty(self.means.to(device), self.whiten.to(device))


def fit_gaussian(h: Tensor, y: Tensor, n_classes: int) -> GaussianNovelty:
    """Class means and the shared (pooled, maximum-likelihood) covariance of h: float[N, D], y: int64[N]."""
    h = h.double()
    means = torch.stack([h[y == k].mean(0) if (y == k).any() else h.mean(0) for k in range(n_classes)])
    centred = h - means[y]
    cov = centred.T @ centred / h.shape[0]
    d = cov.shape[0]
    cov = cov + RIDGE * torch.trace(cov) / d * torch.eye(d, dtype=cov.dtype)
    # Σ⁻¹ = L⁻ᵀ L⁻¹ with Σ = L Lᵀ, so ‖(h − μ) L⁻ᵀ‖² = (h − μ)ᵀ Σ⁻¹ (h − μ)
    chol = torch.linalg.cholesky(cov)
    whiten = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=cov.dtype), upper=False).T
    return GaussianNovelty(means.float(), whiten.float())


@dataclass(frozen=True)
class KnnNovelty:
    """bank float[M, D]: L2-normalised training features; score = distance to the k-th nearest of them.

    The score is ``torch.cdist`` to the bank, then the k-th smallest, computed the way ATen's cdist computes
    Euclidean distances (one matmul of the queries augmented to [−2q, ‖q‖², 1] with the bank augmented to
    [b, 1, ‖b‖²], clamped at 0, square root), with the bank's augmentation precomputed once (``_bank_aug``
    float[M, D + 2]) and the clamp and root taken on the k-th smallest only (both are monotone): bit-identical
    to ``cdist(q, bank).topk(k, largest=False)`` at a fraction of its cost for small batches.
    """

    bank: Tensor
    k: int = KNN_K
    method: str = "knn"
    _bank_aug: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        b = self.bank
        aug = torch.cat([b, torch.ones_like(b[:, :1]), b.pow(2).sum(-1, keepdim=True)], -1)
        object.__setattr__(self, "_bank_aug", aug)

    def score(self, h: Tensor) -> Tensor:
        q = torch.nn.functional.normalize(h.to(self.bank.dtype), dim=1)
        out = []
        for i in range(0, q.shape[0], CHUNK):
            c = q[i : i + CHUNK]
            c_aug = torch.cat([c.mul(-2), c.pow(2).sum(-1, keepdim=True), torch.ones_like(c[:, :1])], -1)
            d2 = c_aug[None].matmul(self._bank_aug[None].mT)[0]  # [c, M] squared distances, as cdist's
            out.append(d2.topk(self.k, dim=1, largest=False).values[:, -1])
        return torch.cat(out).clamp_min(0).sqrt().to(torch.float32) if out else q.new_zeros(0)

    def state(self) -> dict[str, Tensor | str]:
        return {"method": self.method, "bank": self.bank.cpu(), "k": torch.tensor(self.k)}

    def to(self, device: torch.device | str) -> KnnNovelty:
        return KnnNovelty(self.bank.to(device), self.k)


@dataclass(frozen=True)
class SpectrumNovelty:
    """The spectrum-shape detector: ``density`` scores :func:`controller.quality.band_shape` of the band log shares
    (:func:`controller.quality.band_log_shares`) of ``SignalStats.spectrum`` float[B, n_bins] over the bins ``keep``
    bool[n_bins] (mains lines left out), against a band limit: the shape of the first ``bands`` bands (those below
    the recipe's ``spectrum_band_hz``), and any excess of power above them over ``floor`` float[N − bands] (the
    training means)."""

    density: GaussianNovelty
    bands: int
    floor: Tensor
    keep: Tensor
    method: str = "spectrum_shape"

    def score(self, spectrum: Tensor) -> Tensor:
        return self.density.score(band_shape(band_log_shares(spectrum, self.keep), self.bands, self.floor))

    def state(self) -> dict[str, Tensor | str]:
        return {"method": self.method, "window": "hann", "bands": torch.tensor(self.bands),
                "floor": self.floor.cpu(), "keep": self.keep.cpu(), "density": self.density.state()}

    def to(self, device: torch.device | str) -> SpectrumNovelty:
        return SpectrumNovelty(self.density.to(device), self.bands, self.floor.to(device), self.keep.to(device))


def fit_spectrum(spectrum: Tensor, n: int, keep: Tensor | None = None, y: Tensor | None = None,
                 n_classes: int = 1) -> SpectrumNovelty:
    """Class-conditional Gaussians (one shared covariance, :func:`fit_gaussian`) of the training windows' spectrum
    shape against the band limit: ``spectrum`` float[N, n_bins] (:attr:`controller.quality.SignalStats.spectrum`),
    ``n`` leading bands below the limit (the floor of the others = their training means), only the bins where
    ``keep`` bool[n_bins] is True (None: all); ``y`` int64[N] training labels of ``n_classes`` classes (None: one
    class).

    Per class, because a class's spectrum is its own: one Gaussian of all CWRU training frames, 99 % of them faults,
    flagged 73 % of the training frames of healthy bearings unfamiliar (91 % unwindowed). The score is the distance
    to the nearest class's mean, as for the trunk's Mahalanobis model."""
    keep = torch.ones(spectrum.shape[1], dtype=torch.bool) if keep is None else keep.to(torch.bool).cpu()
    shares = band_log_shares(spectrum, keep.to(spectrum.device))
    floor = band_shape(shares, n)[:, n:].mean(0)
    shape = band_shape(shares, n, floor)
    labels = torch.zeros(len(shape), dtype=torch.int64) if y is None else torch.as_tensor(y, dtype=torch.int64)
    return SpectrumNovelty(fit_gaussian(shape, labels.cpu(), 1 if y is None else n_classes), n, floor.cpu(), keep)


def stratified_bank(y: Tensor, bank: int, g: torch.Generator) -> Tensor:
    """int64[≤ bank] indices of a class-stratified random subset of labels ``y`` int64[N]: classes in order of size,
    each takes all its windows or an equal share of what is left, whichever is smaller.

    >>> y = torch.tensor([0] * 90 + [1] * 8 + [2] * 2)
    >>> torch.bincount(y[stratified_bank(y, 30, torch.Generator().manual_seed(0))]).tolist()
    [20, 8, 2]
    """
    counts = torch.bincount(y)
    present = [int(c) for c in torch.argsort(counts) if counts[c] > 0]
    parts, left = [], bank
    for j, c in enumerate(present):
        members = torch.nonzero(y == c).squeeze(1)
        take = min(len(members), left // (len(present) - j))
        parts.append(members[torch.randperm(len(members), generator=g)[:take]])
        left -= take
    return torch.sort(torch.cat(parts)).values


def fit_knn(h: Tensor, k: int = KNN_K, bank: int = KNN_BANK, seed: int = 0, y: Tensor | None = None) -> KnnNovelty:
    """kNN novelty over at most ``bank`` training features ``h`` float[N, D]: a random subset, or with labels ``y``
    int64[N] a class-stratified one (:func:`stratified_bank`). Stratified because a random bank holds the rare classes
    in proportion: on the ``mitdb`` validation windows, at a 0.5 % threshold, a random bank of 5,000 (99 S, 398 V,
    41 F) flagged 6.6 % of V and 7.7 % of F beats against 0.3 % of N; a stratified one 2.4 % / 0 % / 0.4 %."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(h.shape[0], generator=g)[:bank] if y is None else stratified_bank(y.cpu(), bank, g)
    return KnnNovelty(torch.nn.functional.normalize(h[idx].float(), dim=1), k)


def from_state(state: dict) -> NoveltyModel:
    if state["method"] == "mahalanobis":
        return GaussianNovelty(state["means"], state["whiten"])
    if state["method"] == "knn":
        return KnnNovelty(state["bank"], int(state["k"]))
    if state["method"] == "spectrum_shape" and state.get("window") == "hann":
        return SpectrumNovelty(from_state(state["density"]), int(state["bands"]), state["floor"], state["keep"])
    if state["method"] == "spectrum_shape":
        raise ValueError("this spectrum-shape detector was fitted by an older version, on the spectrum without a "
                         "window: recalibrate the checkpoint (`sci-monitor calibrate --dataset NAME`)")
    raise ValueError(f"unknown novelty method {state['method']!r}")


def conformal_threshold(scores: Tensor, rate: float) -> float:
    """Threshold τ with P(score > τ) ≤ ``rate`` for a new exchangeable in-distribution window.

    τ = the ⌈(n + 1)(1 − rate)⌉-th smallest of the n validation scores (+inf when that rank exceeds n).

    >>> conformal_threshold(torch.arange(1.0, 100.0), 0.1)  # n = 99: rank ⌈100 · 0.9⌉ = 90
    90.0
    """
    s = scores.detach().double().cpu().sort().values
    n = s.numel()
    rank = math.ceil((n + 1) * (1 - rate) - 1e-9)
    return float("inf") if rank > n else float(s[rank - 1])
