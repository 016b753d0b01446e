"""The controller's decision for a batch of windows: the one code path of `evaluate`, `evaluate-shift` and the worker.

1. Evidence computed once per window, before any MC pass (:func:`evidence`): the trunk features, the plain
   (deterministic) pass and the input statistics (of the window and, for a model that declares one, of its
   stream context: :func:`stream_context`).
2. Gate: a window failing an input check abstains with reason ``signal_quality``; one whose novelty exceeds the
   card's thresholds (trunk features or spectrum shape) abstains with reason ``unfamiliar``. Neither spends an MC
   pass (``passes`` = 0; its label and probabilities are the plain pass's, reported for the operator, flagged
   abstained).
3. The other windows go through the SCI policy (``controller.engine.run_sci``), which decides how many passes each
   one needs.
4. Risk rule (when the card has one): a window is answered only if its confidence ≥ the certified threshold;
   otherwise it abstains (``budget`` / ``low_sp`` if the policy had already given up, else ``ambiguous``). A window
   the policy left undecided at the budget but whose confidence clears the threshold is answered (``confident``):
   escalations are exactly what the stated risk needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from controller.engine import BLOCK_ROWS, Sampler, SciConfig, SciResult, is_abstention, run_sci_on_device
from controller.interpretive_state import delta_sp, normalized_entropy
from controller.novelty import NoveltyModel
from controller.policies import Policy
from controller.quality import SignalStats, check, signal_stats
from controller.reasons import Reason
from controller.risk import confidence
from models.architectures import McModel
from models.controller_card import QualityRanges, RiskRule


@dataclass(frozen=True)
class Evidence:
    """Per-window evidence for B windows: deterministic float[B, K] logits of the plain pass, trunk float[B, D]
    features, signal statistics of the raw input (None when no check of the gate reads them)."""

    deterministic: Tensor
    trunk: Tensor
    signal: SignalStats | None


def stream_context(model: McModel, aux: Tensor | None) -> Tensor | None:
    """float32[B, C] the stream's usual window carried in the side features (``model.context`` columns of aux),
    or None when the model declares none."""
    return None if model.context is None or aux is None else aux[:, model.context]


def evidence(model: McModel, x: Tensor, aux: Tensor | None, signal: bool = True,
             trunk_rows: int | None = None) -> Evidence:
    """Trunk once, head once without dropout, input statistics (unless ``signal`` is False): x float32[B, L], aux
    float32[B, A] or None; the trunk sees at most ``trunk_rows`` windows per call (None: all in one)."""
    h = trunk_features(model, x, aux, trunk_rows)
    return Evidence(model.head(h), h, signal_stats(x, stream_context(model, aux)) if signal else None)


def trunk_features(model: McModel, x: Tensor, aux: Tensor | None, rows: int | None = None) -> Tensor:
    """float32[B, D] trunk features of x float32[B, L] (aux float32[B, A] or None), ``rows`` windows per call at most
    (None: one call)."""
    if rows is None or x.shape[0] <= rows:
        return model.trunk(x, aux)
    return torch.cat([model.trunk(x[i : i + rows], None if aux is None else aux[i : i + rows])
                      for i in range(0, x.shape[0], rows)])


@dataclass(frozen=True)
class Gate:
    """Checks before the policy: input ranges (None: no checks) and the novelty gate: a density model of the trunk
    features and one of the spectrum's shape (``SignalStats.spectrum``), each with its threshold. The window's novelty
    is max(trunk score / its threshold, spectrum score / its threshold): above 1 it is unfamiliar."""

    quality: QualityRanges | None = None
    novelty: NoveltyModel | None = None
    novelty_threshold: float = float("inf")
    spectrum: NoveltyModel | None = None
    spectrum_threshold: float = float("inf")

    @property
    def reads_signal(self) -> bool:
        """Whether a check reads the input statistics (``Evidence.signal``): input ranges or the spectrum model."""
        return self.quality is not None or self.spectrum is not None

    def to(self, device: torch.device | str) -> Gate:
        return Gate(self.quality, None if self.novelty is None else self.novelty.to(device), self.novelty_threshold,
                    None if self.spectrum is None else self.spectrum.to(device), self.spectrum_threshold)

    def novelty_score(self, ev: Evidence, device: torch.device) -> Tensor:
        """float32[B]: max over the gate's density models of score / threshold (NaN without any)."""
        parts = []
        if self.novelty is not None:
            parts.append(self.novelty.score(ev.trunk.to(device)) / self.novelty_threshold)
        if self.spectrum is not None:
            parts.append(self.spectrum.score(ev.signal.spectrum.to(device)) / self.spectrum_threshold)
        if not parts:
            return torch.full((ev.trunk.shape[0],), float("nan"), device=device)
        return torch.stack(parts).amax(0)


@dataclass(frozen=True)
class Decider:
    """Everything a card prescribes, resolved: policy, SciConfig, gate, risk rule (None: the policy abstains)."""

    policy: Policy
    config: SciConfig
    gate: Gate = Gate()
    risk: RiskRule | None = None


def decide(ev: Evidence, sampler: Sampler, d: Decider, device: torch.device | str = "cpu",
           block_rows: int = BLOCK_ROWS) -> SciResult:
    """Decisions for the B windows of ``ev``; ``sampler(idx, t)`` gives pass t's logits of windows idx (of B);
    ``block_rows`` is the engine's passes-ahead trade-off (results do not depend on it)."""
    dev = torch.device(device)
    if ev.signal is None and d.gate.reads_signal:
        raise ValueError("the gate checks the input statistics, but the evidence has none (evidence(signal=False))")
    det = ev.deterministic.to(dev, torch.float32)
    b, k = det.shape
    temp = d.config.temperature
    quality = (check(ev.signal, d.gate.quality).to(dev) if d.gate.quality is not None
               else torch.zeros(b, dtype=torch.int64, device=dev))
    novelty = d.gate.novelty_score(ev, dev)
    bad = quality != 0
    unfamiliar = ~bad & (novelty > 1.0)
    active = torch.nonzero(~(bad | unfamiliar)).squeeze(1)

    det_probs = torch.softmax(det / temp, dim=1)
    probs = det_probs.clone()
    sp = 1.0 - normalized_entropy(det_probs)
    passes = torch.zeros(b, dtype=torch.int64, device=dev)
    reason = torch.where(bad, Reason.SIGNAL_QUALITY, Reason.UNFAMILIAR).to(torch.int64)
    if active.numel():
        probs[active], sp[active], passes[active], reason[active] = run_sci_on_device(
            lambda idx, t: sampler(active[idx.to(active.device)], t), active.numel(), k, d.policy, d.config, dev,
            block_rows)

    conf = torch.full((b,), float("nan"), device=dev)
    if d.risk is not None:
        conf = confidence(d.risk.score, probs, sp, det_probs, novelty, d.risk.weights)
        gave_up = (reason == Reason.BUDGET) | (reason == Reason.LOW_SP)
        ok = conf >= d.risk.threshold
        policy_done = ~(bad | unfamiliar)
        reason = torch.where(policy_done & ok & gave_up, Reason.CONFIDENT, reason)
        reason = torch.where(policy_done & ~ok & ~gave_up, Reason.AMBIGUOUS, reason)
    # to the host in two copies (one per dtype), not one per field: each is a sync on a GPU
    scalars = [sp, delta_sp(sp, d.config.sp_star), novelty, conf]
    reals = torch.cat([probs.float(), torch.stack([x.float() for x in scalars], 1)], 1).detach().cpu().numpy()
    ints = torch.stack([probs.argmax(1), passes, reason, quality.long(), is_abstention(reason).long()], 1)
    ints = ints.detach().cpu().numpy()
    label, passes_h, reason_h, quality_h, abstained = (np.ascontiguousarray(ints[:, j]) for j in range(5))
    sp_h, dsp_h, novelty_h, conf_h = (np.ascontiguousarray(reals[:, k + j]) for j in range(4))
    return SciResult(label, np.ascontiguousarray(reals[:, :k]), sp_h, dsp_h, passes_h, abstained.astype(bool),
                     reason_h, novelty_h, quality_h, conf_h)
