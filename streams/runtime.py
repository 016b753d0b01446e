"""The models a worker serves, loaded once onto the device, and the batch classification they do.

One ``ModelRuntime`` per worker process: each modality maps to one checkpoint whose SciController lives on the device
for the life of the worker. ``classify`` takes decoded windows of any mix of modalities, groups them by model,
stacks each group into one tensor batch and returns one result per window (or a rejection reason for windows the
model cannot take, e.g. a wrong length or sampling rate). It is blocking work and runs off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from controller.engine import SciResult
from controller.sci import SciController
from models.checkpoint import ModelCard, load_checkpoint
from models.keyed_dropout import window_keys
from streams.contracts import SensorWindow

DEFAULT_MODELS = {"ecg": "mitdb", "vibration": "cwru"}


@dataclass(frozen=True)
class WindowResult:
    """The controller's decision for one window (probs over ``classes``)."""

    model: str
    classes: tuple[str, ...]
    label: str
    probs: np.ndarray
    sp: float
    delta_sp: float
    passes: int
    abstained: bool
    reason: str


@dataclass
class ServedModel:
    card: ModelCard
    controller: SciController

    def check(self, w: SensorWindow) -> str | None:
        """Why this model cannot classify ``w``, or None."""
        c = self.card
        if w.samples.size != c.input_length:
            return f"{w.modality} model {c.name} needs {c.input_length} samples, got {w.samples.size}"
        if abs(w.fs - c.fs) > 1e-6 * c.fs:
            return f"{w.modality} model {c.name} needs fs = {c.fs:g} Hz, got {w.fs:g}"
        if c.aux is not None:
            feats = w.features.get(c.aux)
            n_aux = self.controller.model.aux_dim
            if feats is None or len(feats) != n_aux:
                return f"{w.modality} model {c.name} needs features[{c.aux!r}] of {n_aux} values"
        return None

    def classify(self, group: Sequence[SensorWindow]) -> SciResult:
        x = np.stack([w.samples for w in group])
        aux = np.asarray([w.features[self.card.aux] for w in group], np.float32) if self.card.aux else None
        keys = window_keys([w.stream for w in group], torch.tensor([w.seq for w in group]))
        return self.controller.classify(x, aux, keys)


class ModelRuntime:
    """Serves one checkpoint per modality on ``device``."""

    def __init__(self, device: torch.device | str, models: dict[str, str] | None = None) -> None:
        self.device = torch.device(device)
        self.models: dict[str, ServedModel] = {}
        for modality, name in (models or DEFAULT_MODELS).items():
            model, card = load_checkpoint(name, self.device)
            if card.modality != modality:
                raise ValueError(f"checkpoint {name} is for {card.modality}, not {modality}")
            self.models[modality] = ServedModel(card, SciController.from_card(model, card, self.device))

    def classify(self, windows: Sequence[SensorWindow]) -> list[WindowResult | str]:
        """One WindowResult per window, or a string saying why the window was rejected."""
        out: list[WindowResult | str] = [""] * len(windows)
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(windows):
            served = self.models.get(w.modality)
            problem = f"no model serves modality {w.modality!r}" if served is None else served.check(w)
            if problem:
                out[i] = problem
            else:
                groups.setdefault(w.modality, []).append(i)
        for modality, idx in groups.items():
            served = self.models[modality]
            r = served.classify([windows[i] for i in idx])
            classes = tuple(served.card.classes)
            labels = [classes[k] for k in r.label.tolist()]
            reasons = r.reason_names()
            for j, i in enumerate(idx):
                out[i] = WindowResult(served.card.name, classes, labels[j], r.probs[j], float(r.sp[j]),
                                      float(r.delta_sp[j]), int(r.passes[j]), bool(r.abstained[j]), reasons[j])
        return out

