"""The models a worker serves, loaded once onto the device, and the batch classification they do.

One ``ModelRuntime`` per worker process: each (modality, lead) maps to one checkpoint (the ``models`` setting over
the defaults of :mod:`streams.modalities`) whose SciController lives on the device for the life of the worker.
``classify`` takes decoded windows of any mix of modalities and leads, groups them by model, stacks each group
into one tensor batch and returns one result per window. A window whose (modality, lead) no model serves gets an
abstained result with reason ``unsupported_lead`` (an escalation, not an error); a window a model cannot take
(wrong length or sampling rate, missing features) gets a rejection reason (a dead letter). It is blocking work
and runs off the event loop. Each result carries what the controller's decision says beside the reason (novelty
score, input-check verdict, risk confidence) and the serving card's ΔSP alert levels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from controller.engine import SciResult
from controller.quality import QualityFlag
from controller.reasons import Reason
from controller.sci import SciController
from models.checkpoint import ModelCard, checkpoint_dir_of, load_checkpoint
from models.controller_card import AlertLevels
from models.device import worker_threads
from models.keyed_dropout import window_keys
from streams import modalities
from streams.contracts import SensorWindow

ModelKey = tuple[str, str]  # (modality, lead)


def quality_name(code: int) -> str:
    """The input-check verdict as messages and storage carry it: ``"ok"`` (0) or the failed checks of the
    :class:`~controller.quality.QualityFlag` bits joined by ``+``.

    >>> quality_name(0), quality_name(1), quality_name(6)
    ('ok', 'flat', 'clipped+amplitude')
    """
    return "+".join(QualityFlag(int(code)).names()) or "ok"


@dataclass(frozen=True)
class WindowResult:
    """The controller's decision for one window (probs float32[K] over ``classes``), routed by ``lead``.

    ``novelty``: the gate's score (> 1: unfamiliar; NaN without a novelty model); ``quality``: the input-check
    verdict (:func:`quality_name`; None when the card has no input checks or no model ran); ``confidence``: the
    risk rule's score (NaN without a risk rule); ``alerts``: the serving card's ΔSP alert levels (None: the card
    has none, or no model ran).
    """

    model: str
    classes: tuple[str, ...]
    label: str
    probs: np.ndarray
    sp: float
    delta_sp: float
    passes: int
    abstained: bool
    reason: str
    lead: str
    novelty: float = math.nan
    quality: str | None = None
    confidence: float = math.nan
    alerts: AlertLevels | None = None

    @property
    def served(self) -> bool:
        """A model took the window (False: no model serves its modality and lead). A served window may have 0
        passes: the controller's gate (``signal_quality``, ``unfamiliar``) decides before any MC pass."""
        return bool(self.model)

    @classmethod
    def unserved(cls, lead: str) -> WindowResult:
        """No model serves this window's (modality, lead): abstained before any pass."""
        return cls("", (), "", np.zeros(0, np.float32), 0.0, 0.0, 0, True, Reason.UNSUPPORTED_LEAD.label, lead)


@dataclass
class ServedModel:
    card: ModelCard
    controller: SciController
    spec: modalities.ModalitySpec

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
        return self.spec.check(w) if self.spec.check is not None else None

    def classify(self, group: Sequence[SensorWindow]) -> SciResult:
        x = np.stack([w.samples for w in group])
        aux = np.asarray([w.features[self.card.aux] for w in group], np.float32) if self.card.aux else None
        keys = window_keys([w.stream for w in group], torch.tensor([w.seq for w in group]))
        return self.controller.classify(x, aux, keys)


class ModelRuntime:
    """Serves one checkpoint per (modality, lead) on ``device``; ``models`` (checkpoint names or ``.json``
    paths) defaults to the registry's."""

    def __init__(self, device: torch.device | str, models: Mapping[ModelKey, str] | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cpu":  # call from the thread that will classify (OpenMP settings are per thread)
            torch.set_num_threads(worker_threads())
        self.models: dict[ModelKey, ServedModel] = {}
        loaded: dict[str, ServedModel] = {}  # one controller per checkpoint, shared by the leads it serves
        for (modality, lead), name in (modalities.default_models() if models is None else models).items():
            spec = modalities.get(modality)
            if name not in loaded:
                model, card = load_checkpoint(name, self.device)
                if card.modality != modality:
                    raise ValueError(f"checkpoint {name} is for {card.modality}, not {modality}")
                if card.aux != spec.feature_key:
                    raise ValueError(f"checkpoint {name} needs features {card.aux!r}, modality {modality} carries "
                                     f"{spec.feature_key!r}")
                controller = SciController.from_card(model, card, self.device, checkpoint_dir_of(name))
                loaded[name] = ServedModel(card, controller, spec)
            self.models[(modality, lead)] = loaded[name]

    def describe(self) -> dict[str, str]:
        """``"modality:lead" -> checkpoint`` (for logs)."""
        return {f"{m}:{lead}": s.card.name for (m, lead), s in self.models.items()}

    def classify(self, windows: Sequence[SensorWindow]) -> list[WindowResult | str]:
        """One WindowResult per window, or a string saying why the window was rejected."""
        out: list[WindowResult | str] = [""] * len(windows)
        groups: dict[str, list[int]] = {}
        leads: list[str] = []
        for i, w in enumerate(windows):
            lead = modalities.get(w.modality).lead_of(w.lead)
            leads.append(lead)
            served = self.models.get((w.modality, lead))
            if served is None:
                out[i] = WindowResult.unserved(lead)
                continue
            problem = served.check(w)
            if problem:
                out[i] = problem
            else:
                groups.setdefault(served.card.name, []).append(i)
        for idx in groups.values():
            served = self.models[(windows[idx[0]].modality, leads[idx[0]])]
            r = served.classify([windows[i] for i in idx])
            card = served.card.controller
            classes = tuple(served.card.classes)
            labels = [classes[k] for k in r.label.tolist()]
            reasons = r.reason_names()
            n = len(idx)
            novelty = r.novelty.tolist() if r.novelty is not None else [math.nan] * n
            confidence = r.confidence.tolist() if r.confidence is not None else [math.nan] * n
            quality = ([quality_name(q) for q in r.quality.tolist()] if card.quality is not None and
                       r.quality is not None else [None] * n)
            for j, i in enumerate(idx):
                out[i] = WindowResult(served.card.name, classes, labels[j], r.probs[j], float(r.sp[j]),
                                      float(r.delta_sp[j]), int(r.passes[j]), bool(r.abstained[j]), reasons[j],
                                      leads[i], float(novelty[j]), quality[j], float(confidence[j]), card.alerts)
        return out
