"""Deterministic mini-batch training of McModels and temperature fitting on held-out logits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.architectures import McModel


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    class_weighted: bool = True  # class weights (inverse frequency ** class_weight_power) in the cross-entropy
    class_weight_power: float = 1.0  # 1 = inverse frequency, 0.5 = its square root (tempered)
    seed: int = 42


@dataclass(frozen=True)
class Arrays:
    """One split: x float32[N, L], aux float32[N, A] or None, y int64[N]."""

    x: np.ndarray
    aux: np.ndarray | None
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def class_weights(y: np.ndarray, n_classes: int, power: float = 1.0) -> Tensor:
    """(1/frequency)**power per class, normalised to mean 1 over present classes (absent classes get 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.where(present, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    return torch.tensor(w / w[present].mean(), dtype=torch.float32)


def train_model(model: McModel, data: Arrays, n_classes: int, cfg: TrainConfig,
                on_epoch: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Train in place on CPU/GPU wherever the model is; returns {"seconds", "final_loss"}.

    Deterministic for a seed on CPU: the shuffling generator and parameter init are seeded here.
    """
    gen = seed_everything(cfg.seed)
    device = next(model.parameters()).device
    x = torch.as_tensor(data.x, dtype=torch.float32)
    aux = None if data.aux is None else torch.as_tensor(data.aux, dtype=torch.float32)
    y = torch.as_tensor(data.y, dtype=torch.int64)
    weight = class_weights(data.y, n_classes, cfg.class_weight_power).to(device) if cfg.class_weighted else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, loss_value = time.perf_counter(), float("nan")
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(y), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            if len(b) < 2:  # BatchNorm needs two samples
                continue
            xb = x[b].to(device)
            ab = None if aux is None else aux[b].to(device)
            loss = F.cross_entropy(model(xb, ab), y[b].to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            seen += len(b)
        loss_value = total / max(seen, 1)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_value)
    model.eval()
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": round(loss_value, 5)}


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
