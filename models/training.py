"""Deterministic mini-batch training of McModels and temperature fitting on held-out logits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, TensorDataset, WeightedRandomSampler

from models.architectures import SIDE_FEATURES, Ensemble, McModel, SideExpert
from models.reductions import row_median


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    class_weighted: bool = True  # class weights (inverse frequency ** class_weight_power) in the cross-entropy
    class_weight_power: float = 1.0  # 1 = inverse frequency, 0.5 = its square root (tempered)
    augment: str | None = None  # "ecg": see ecg_augment
    sample_power: float = 0.0  # > 0: epochs of epoch_size draws with replacement, P(window) ∝ count(class)^-power
    epoch_size: int | None = None  # windows per epoch when sampling (default: the training set size)
    seed: int = 42
    members: int = 1  # > 1: a deep ensemble (models.architectures.Ensemble), member m trained with seed + m
    side_expert: float = 0.0  # > 0: add a linear expert on the side features with this weight (fit_side_expert)


@dataclass(frozen=True)
class Arrays:
    """One split: x float32[N, L], aux float32[N, A] or None, y int64[N]."""

    x: np.ndarray
    aux: np.ndarray | None
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def class_weights(y: np.ndarray, n_classes: int, power: float = 1.0) -> Tensor:
    """(1/frequency)**power per class, normalised to mean 1 over present classes (absent classes get 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.where(present, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    return torch.tensor(w / w[present].mean(), dtype=torch.float32)


def ecg_augment(x: Tensor, fs: float = 360.0, max_shift: int = 4, wander: float = 0.3, noise: float = 0.05,
                stretch: float = 0.0, max_gain: float = 2.0, centre: int = 96) -> Tensor:
    """Randomly perturbed copy of ECG beat windows x: float32[B, L] at ``fs`` Hz (draws from torch's global RNG).

    Per window: gain × exp(U(−ln g, ln g)) with g = ``max_gain``; baseline wander = offset + slope + a sinusoid of
    0.1–0.6 Hz, each with amplitude up to ``wander`` × the window's RMS; white noise with std U(0, ``noise``) × RMS;
    a circular time shift of up to ``max_shift`` samples (the live detector places R a few samples off the
    annotation); with ``stretch`` > 0 a time scaling about the R peak (index ``centre``) by a factor in
    [1 − stretch, 1 + stretch] (linear interpolation, edges held), for QRS widths and heart rates unlike the
    training patients'.
    """
    b, n = x.shape
    dev = x.device
    rms = (x - row_median(x)).pow(2).mean(dim=1, keepdim=True).sqrt()
    u = torch.rand(b, 7, device=dev)
    t = torch.arange(n, device=dev, dtype=x.dtype)[None, :] / fs
    gain = torch.exp((2 * u[:, 0:1] - 1) * float(np.log(max_gain)))
    f = 0.1 + 0.5 * u[:, 1:2]
    base = wander * rms * ((2 * u[:, 2:3] - 1) + (2 * u[:, 3:4] - 1) * t / t[:, -1:]
                           + (2 * u[:, 4:5] - 1) * torch.sin(2 * np.pi * f * t + 2 * np.pi * u[:, 5:6]))
    out = gain * (x + base + noise * u[:, 6:7] * rms * torch.randn(b, n, device=dev))
    if stretch:
        s = 1.0 + stretch * (2 * torch.rand(b, 1, device=dev) - 1)
        pos = (centre + (torch.arange(n, device=dev)[None, :] - centre) * s).clamp(0, n - 1)
        lo = pos.floor().long().clamp(max=n - 2)
        frac = pos - lo
        out = out.gather(1, lo) * (1 - frac) + out.gather(1, lo + 1) * frac
    if max_shift:
        shifts = torch.randint(-max_shift, max_shift + 1, (b,), device=dev)
        idx = (torch.arange(n, device=dev)[None, :] - shifts[:, None]) % n
        out = out.gather(1, idx)
    return out


# the ECG model measures the beat against the stream's template (not augmented): a gain of the beat alone is a change
# of its relative amplitude, so it stays within ±10 %. Time stretching (``stretch``) was tried on the DS1 folds only
# with the beat-only model (macro-F1 0.334 vs 0.326), not with the template model: not in the recipe.
AUGMENTATIONS: dict[str, Callable[[Tensor], Tensor]] = {"ecg": lambda x: ecg_augment(x, max_gain=1.1)}


def epoch_sampler(y: np.ndarray, n_classes: int, cfg: TrainConfig) -> Sampler[int]:
    """Indices of one epoch: a plain shuffle, or with ``cfg.sample_power`` > 0 class-balanced draws with replacement
    (``cfg.epoch_size`` of them, P(window) ∝ count(its class)^−power: power 1 gives every class the same share)."""
    if cfg.sample_power <= 0:
        return RandomSampler(range(len(y)))
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = torch.as_tensor(counts[y] ** -cfg.sample_power, dtype=torch.float64)
    return WeightedRandomSampler(w, cfg.epoch_size or len(y), replacement=True)


def train_model(make_model: Callable[[], McModel], data: Arrays, n_classes: int, cfg: TrainConfig,
                device: str | torch.device = "cpu", on_epoch: Callable[[int, float], None] | None = None
                ) -> tuple[McModel, dict[str, float]]:
    """Seed torch with ``cfg.seed``, build the model (on CPU, then moved to ``device``) and train it.

    Returns (model in eval mode, {"seconds", "final_loss"}). The global torch generator drives, in this order,
    parameter init, each epoch's shuffle (a ``DataLoader`` with a ``RandomSampler``) and the training-time dropout:
    the standard PyTorch recipe, so a reference script seeded the same way trains bit-identical weights on CPU.
    With ``cfg.members`` > 1 it trains that many members one after another (seeds ``cfg.seed + m``; member 0 is
    the single model of ``cfg.seed``) and returns their :class:`~models.architectures.Ensemble`. With
    ``cfg.side_expert`` > 0 the model (or ensemble) is then joined by a linear expert on its side features
    (:func:`fit_side_expert`), fitted on the same training windows.
    """
    if cfg.side_expert > 0:
        model, info = train_model(make_model, data, n_classes, replace(cfg, side_expert=0.0), device, on_epoch)
        return fit_side_expert(model, data, n_classes, cfg.side_expert), info
    if cfg.members > 1:
        start = time.perf_counter()
        fits = [train_model(make_model, data, n_classes, replace(cfg, members=1, seed=cfg.seed + m), device,
                            on_epoch) for m in range(cfg.members)]
        loss = sum(info["final_loss"] for _, info in fits) / len(fits)
        return Ensemble.of([m for m, _ in fits]).eval(), {"seconds": round(time.perf_counter() - start, 1),
                                                           "final_loss": round(loss, 5)}
    torch.manual_seed(cfg.seed)
    model = make_model().to(device)
    tensors = [torch.as_tensor(data.x, dtype=torch.float32), torch.as_tensor(data.y, dtype=torch.int64)]
    if data.aux is not None:
        tensors.insert(1, torch.as_tensor(data.aux, dtype=torch.float32))
    dataset = TensorDataset(*tensors)
    # whole batches are indexed at once (batch_size=None + a BatchSampler): same sampling as DataLoader(shuffle=True)
    loader = DataLoader(dataset, batch_size=None, sampler=BatchSampler(epoch_sampler(data.y, n_classes, cfg),
                                                                       cfg.batch_size, False))
    weight = class_weights(data.y, n_classes, cfg.class_weight_power).to(device) if cfg.class_weighted else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, loss_value = time.perf_counter(), float("nan")
    for epoch in range(cfg.epochs):
        model.train()
        total, seen = 0.0, 0
        for batch in loader:
            xb, *ab, yb = (t.to(device) for t in batch)
            if cfg.augment:
                xb = AUGMENTATIONS[cfg.augment](xb)
            if len(yb) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(xb, ab[0] if ab else None), yb, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            seen += len(yb)
        loss_value = total / max(seen, 1)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_value)
    model.eval()
    return model, {"seconds": round(time.perf_counter() - start, 1), "final_loss": round(loss_value, 5)}


def fit_side_expert(model: McModel, data: Arrays, n_classes: int, weight: float = 1.0) -> SideExpert:
    """``model`` joined by a class-balanced multinomial logistic regression (scikit-learn, L2, C = 1) on its
    standardised side features (:class:`~models.architectures.SideExpert`), fitted on ``data`` (aux float32[N, A],
    y int64[N]; every one of the ``n_classes`` classes must occur)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if model.side_kind is None or data.aux is None:
        raise ValueError("a side expert needs a model with side features and training data with aux")
    missing = sorted(set(range(n_classes)) - set(np.unique(data.y).tolist()))
    if missing:
        raise ValueError(f"a side expert needs training windows of every class; none of class {missing}")
    z = SIDE_FEATURES[model.side_kind](torch.as_tensor(data.aux, dtype=torch.float32)).numpy()
    scaler = StandardScaler().fit(z)
    lr = LogisticRegression(class_weight="balanced", max_iter=2000).fit(scaler.transform(z), data.y)
    device = next(model.parameters()).device
    out = SideExpert(model.arch, model.arch_params, n_classes, weight)
    out.base.load_state_dict(model.state_dict())
    for name, value in (("mean", scaler.mean_), ("scale", scaler.scale_), ("coef", lr.coef_),
                        ("intercept", lr.intercept_)):
        getattr(out, name).copy_(torch.as_tensor(value, dtype=torch.float32))
    return out.to(device).eval()


def fit_temperature(logits: Tensor, y: Tensor, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T); logits float[N, K], y int64[N].

    Fit on held-out (validation) logits only.
    """
    logits, y = logits.detach().float().cpu(), y.cpu()
    log_t = nn.Parameter(torch.zeros(()))
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
