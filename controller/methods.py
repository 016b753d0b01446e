"""Every method compared by the evaluation, run on the same passes of the same windows.

Baselines: ``deterministic`` (one plain pass, no abstention), ``fixed_t`` (mean of T_max MC passes),
``max_prob`` and ``entropy`` (one plain pass, abstaining below a confidence threshold chosen on the validation split
to match the controller's validation escalation rate). SCI policies alone: ``sci_<policy>``. The card's full
decision (input checks, novelty gate, selected policy, risk rule; ``controller.decision.decide``): ``controller``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from controller.decision import Decider, decide
from controller.engine import SciConfig, SciResult, replay_sampler, run_sci
from controller.interpretive_state import delta_sp, interpretive_state, normalized_entropy
from controller.passes import SplitPasses
from controller.policies import Policy


@dataclass(frozen=True)
class Outcome:
    """Per-window outcome of one method (N windows).

    label int64[N]; max_prob float[N]; confidence float[N] (higher = more trusted; ranks risk-coverage);
    score float[N] (higher = more likely wrong; the method's own misclassification score); passes int64[N];
    abstained bool[N]; sp, delta_sp float[N] (SCI and fixed_t; NaN-free).
    """

    label: np.ndarray
    max_prob: np.ndarray
    confidence: np.ndarray
    score: np.ndarray
    passes: np.ndarray
    abstained: np.ndarray
    sp: np.ndarray
    delta_sp: np.ndarray


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def deterministic(p: SplitPasses, cfg: SciConfig) -> Outcome:
    probs = torch.softmax(p.deterministic / cfg.temperature, dim=1)
    sp = 1.0 - normalized_entropy(probs)
    n = len(p.y)
    return Outcome(_np(probs.argmax(1)), _np(probs.max(1).values), _np(probs.max(1).values),
                   _np(1 - probs.max(1).values), np.ones(n, np.int64), np.zeros(n, bool), _np(sp),
                   _np(delta_sp(sp, cfg.sp_star)))


def fixed_t(p: SplitPasses, cfg: SciConfig) -> Outcome:
    mean_logits = p.mc[:, : cfg.t_max].mean(1)
    probs = torch.softmax(mean_logits / cfg.temperature, dim=1)
    sp = interpretive_state(mean_logits, cfg.temperature)
    n = len(p.y)
    return Outcome(_np(probs.argmax(1)), _np(probs.max(1).values), _np(sp), _np(1 - sp),
                   np.full(n, cfg.t_max, np.int64), np.zeros(n, bool), _np(sp), _np(delta_sp(sp, cfg.sp_star)))


def confidence_threshold(confidence: np.ndarray, abstain_rate: float) -> float:
    """Threshold τ so that abstaining where confidence < τ abstains on ``abstain_rate`` of these windows."""
    if abstain_rate <= 0:
        return -np.inf
    return float(np.quantile(confidence, abstain_rate))


def thresholded(base: Outcome, threshold: float, use_entropy: bool) -> Outcome:
    """The deterministic pass abstaining where its confidence (max prob, or SP = 1 − normalized entropy) < τ."""
    conf = base.sp if use_entropy else base.max_prob
    score = 1 - base.sp if use_entropy else base.score
    return Outcome(base.label, base.max_prob, conf, score, base.passes, conf < threshold, base.sp, base.delta_sp)


def sci(p: SplitPasses, policy: Policy, cfg: SciConfig) -> Outcome:
    r = run_sci(replay_sampler(p.mc), len(p.y), p.mc.shape[2], policy, cfg)
    return Outcome(r.label, r.probs.max(1), r.sp, r.delta_sp, r.passes, r.abstained, r.sp, r.delta_sp)


GATED_CONFIDENCE = -1.0  # confidence given to windows the gate stopped (ranked below every answered one)


def controller(p: SplitPasses, decider: Decider) -> tuple[Outcome, SciResult]:
    """The full decision. score = 1 − the risk rule's confidence (SP without a rule), over every window: the
    misclassification AUROC of the score the controller abstains by; confidence (risk-coverage curves, AURC) is the
    same with the gated windows ranked below every other, as the decision treats them."""
    r = decide(p.evidence(), replay_sampler(p.mc), decider)
    gated = r.passes == 0
    conf = (r.sp if decider.risk is None else r.confidence).astype(np.float64)
    out = Outcome(r.label, r.probs.max(1), np.where(gated, GATED_CONFIDENCE, conf), 1 - conf, r.passes,
                  r.abstained, r.sp, r.delta_sp)
    return out, r


def run_all(p: SplitPasses, policies: dict[str, Policy], cfg: SciConfig,
            baseline_abstain: dict[str, float], decider: Decider | None = None) -> dict[str, Outcome]:
    """All methods on one split. ``baseline_abstain``: {"max_prob": τ, "entropy": τ} thresholds (from validation);
    ``decider``: the card's full decision (adds the ``controller`` method)."""
    det = deterministic(p, cfg)
    out = {"deterministic": det, "fixed_t": fixed_t(p, cfg),
           "max_prob": thresholded(det, baseline_abstain["max_prob"], use_entropy=False),
           "entropy": thresholded(det, baseline_abstain["entropy"], use_entropy=True)}
    out.update({f"sci_{name}": sci(p, pol, cfg) for name, pol in policies.items()})
    if decider is not None:
        out["controller"] = controller(p, decider)[0]
    return out
