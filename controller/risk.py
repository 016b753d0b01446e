"""Risk-controlled abstention: answer a window only when its confidence clears a threshold certified on validation.

The operator states a target risk α (error rate among answered windows) and a confidence 1 − δ. With the
validation split cut in two halves, the *fit* half fixes the candidate thresholds (its confidence quantiles at
coverages 1 %, 2 %, ..., 100 %) and their testing order (most promising first: ascending p-value on the fit half),
and the *calibration* half tests them in that fixed order (Learn-then-Test, Angelopoulos et al. 2021, with
fixed-sequence testing): for threshold λ with n answered windows and k errors among them, the p-value of
"risk(λ) > α" is the binomial tail P(Binom(n, α) ≤ k) (exact, valid conditionally on n, as in Geifman &
El-Yaniv 2017). Testing stops at the first p-value above δ; of the thresholds rejected before that, the one
answering the most calibration windows is used. Then P(risk among answered windows > α) ≤ δ for windows
exchangeable with validation ones; if nothing is certified every window that reaches the rule abstains. (Testing
strictest-first would stop at once: the most confident windows include a few confidently wrong ones.)

With windows from several groups (held-out patients of different models: ``controller.calibration.fit_risk``),
the promise is made for each group, not for their pool: λ's null hypothesis is "risk(λ) > α in some group", and its
p-value is the largest of the groups' binomial p-values (an intersection-union test, Berger 1982: valid at level δ
with no multiplicity correction, because rejecting it needs every group's own test to reject). A pooled rate would
let the easy groups' many right answers pay for a group of patients on whom the model fails more often.

Confidence scores (the one used is chosen on the fit half by the coverage this procedure certifies there, ties by
misclassification AUROC: ``controller.calibration.fit_risk``): ``max_prob`` (of the MC mean at the controller's last
pass), ``sp``, ``max_prob_det`` (the plain deterministic pass), and two learned ones, 1 − a logistic regression's
probability of an error (:data:`LEARNED`): ``combined`` (on log(1 − max_prob), log(1 − max_prob_det) and log
novelty) and ``max_prob_by_class`` (on log(1 − max_prob), with an intercept and a slope per predicted label:
class-conditional, "Mondrian", calibration). A label the model gives often and wrongly
(the ECG model's F: 205 of its 210 calls on validation are wrong) then has low confidence however sure the softmax
is, which one threshold on max_prob cannot express.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor

SCORES = ("max_prob", "sp", "max_prob_det", "combined", "max_prob_by_class")
COVERAGE_STEPS = 100
_EPS = 1e-6


def combined_features(probs: Tensor, det_probs: Tensor, novelty: Tensor) -> Tensor:
    """float[B, 3]: log(1 − max prob of the MC mean), log(1 − max prob of the plain pass), log novelty."""
    return torch.stack([(1 - probs.max(1).values + _EPS).log(), (1 - det_probs.max(1).values + _EPS).log(),
                        (novelty.clamp_min(0) + _EPS).log()], dim=1)


def by_class_features(probs: Tensor, det_probs: Tensor, novelty: Tensor) -> Tensor:
    """float[B, 2K]: the one-hot predicted label (argmax of the MC mean probs float[B, K]), then the same one-hot
    times log(1 − max prob): a logistic regression on them has an intercept and a slope per predicted label.

    >>> p = torch.tensor([[0.25, 0.75]])  # label 1, log(1 − 0.75); the plain pass and novelty are not used
    >>> f = by_class_features(p, p, torch.zeros(1))
    >>> f[0, :2].tolist(), abs(float(f[0, 2])), round(float(f[0, 3]), 4)
    ([0.0, 1.0], 0.0, -1.3863)
    """
    onehot = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)
    return torch.cat([onehot, onehot * (1 - probs.max(1).values + _EPS).log()[:, None]], dim=1)


# learned scores: their features, fitted by a logistic regression of the error (weights = (bias, *coefficients))
LEARNED = {"combined": combined_features, "max_prob_by_class": by_class_features}


def confidence(score: str, probs: Tensor, sp: Tensor, det_probs: Tensor, novelty: Tensor,
               weights: tuple[float, ...] = ()) -> Tensor:
    """float32[B] confidence (higher = more trusted) of ``score`` (one of :data:`SCORES`).

    probs float[B, K] (MC mean), sp float[B], det_probs float[B, K] (plain pass), novelty float[B];
    a :data:`LEARNED` score uses weights (bias, w1, w2, ...) and returns 1 − the modelled error probability.
    """
    if score == "max_prob":
        return probs.max(1).values.float()
    if score == "sp":
        return sp.float()
    if score == "max_prob_det":
        return det_probs.max(1).values.float()
    if score in LEARNED:
        w = torch.as_tensor(weights, dtype=torch.float32, device=probs.device)
        z = w[0] + LEARNED[score](probs, det_probs, novelty).float() @ w[1:]
        return 1 - torch.sigmoid(z)
    raise ValueError(f"unknown confidence score {score!r}; choose one of {SCORES}")


def binomial_pvalue(errors: int, n: int, alpha: float) -> float:
    """p-value of H0 "risk > α" after ``errors`` errors in ``n`` answered windows: P(Binom(n, α) ≤ errors).

    >>> round(binomial_pvalue(0, 100, 0.02), 4)  # 0.98 ** 100
    0.1326
    >>> binomial_pvalue(0, 0, 0.02)
    1.0
    """
    return 1.0 if n == 0 else float(binom.cdf(errors, n, alpha))


def min_answered(alpha: float, delta: float) -> int:
    """Fewest answered windows that can certify risk ≤ α at level δ (with zero errors).

    >>> min_answered(0.02, 0.1)
    114
    """
    return math.ceil(math.log(delta) / math.log(1 - alpha))


def group_pvalues(conf: np.ndarray, wrong: np.ndarray, grid: np.ndarray, alpha: float,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """float64[G] p-value of "risk > α among answered windows in some group" for each threshold of ``grid``
    float[G]: the largest over groups of :func:`binomial_pvalue` (intersection-union test). conf float[n], wrong
    bool[n], groups int[n] (None: one group); a window is answered at λ when conf ≥ λ.

    >>> conf, wrong = np.array([0.9, 0.8, 0.7, 0.9]), np.array([False, True, False, False])
    >>> group_pvalues(conf, wrong, np.array([0.75]), 0.5).round(4).tolist()  # one group: 1 error in 3
    [0.5]
    >>> group_pvalues(conf, wrong, np.array([0.75]), 0.5, np.array([0, 0, 1, 1])).round(4).tolist()  # 1 in 2
    [0.75]
    """
    conf = np.asarray(conf, np.float64)
    wrong = np.asarray(wrong, bool)
    g = np.zeros(len(conf), np.int64) if groups is None else np.asarray(groups, np.int64)
    onehot = np.eye(int(g.max(initial=0)) + 1)[g]
    onehot = onehot[:, onehot.any(0)]  # [n, groups]: a group without windows makes no promise
    answered = conf[None, :] >= np.asarray(grid, np.float64)[:, None]  # [G, n]
    n, k = answered @ onehot, (answered & wrong[None, :]) @ onehot  # [G, groups]
    return np.where(n > 0, binom.cdf(k, n, alpha), 1.0).max(1)


def threshold_grid(conf_fit: np.ndarray, wrong_fit: np.ndarray, n_cal: int, alpha: float, delta: float,
                   steps: int = COVERAGE_STEPS, groups_fit: np.ndarray | None = None) -> np.ndarray:
    """Candidate thresholds in testing order, from the fit half only: its confidence quantiles at coverages
    1/steps .. 1 and −inf (answer all), ordered by ascending fit-half p-value (:func:`group_pvalues` with the fit
    half's ``groups_fit``; ties: more coverage first). Coverages whose expected answered count on the calibration
    half (coverage · n_cal, ``n_cal`` the calibration windows of its smallest group) is below :func:`min_answered`
    are left out (they could never be certified and would stop the sequence)."""
    conf_fit = np.asarray(conf_fit, np.float64)
    cov = np.arange(1, steps + 1) / steps
    cov = cov[cov * n_cal >= min_answered(alpha, delta)]
    grid = np.concatenate([np.quantile(conf_fit, 1 - cov), [-np.inf]])
    p = group_pvalues(conf_fit, wrong_fit, grid, alpha, groups_fit)
    order = np.lexsort((grid, p))  # primary: p-value, then the lower (looser) threshold first
    return grid[order]


@dataclass(frozen=True)
class Certified:
    """Outcome of Learn-then-Test on the calibration half."""

    threshold: float  # +inf when nothing is certified (abstain on every window reaching the rule)
    certified: bool
    n: int  # calibration windows
    answered: int
    errors: int
    p_value: float  # of the chosen threshold (1.0 when none)


def learn_then_test(conf: np.ndarray, wrong: np.ndarray, grid: np.ndarray, alpha: float, delta: float,
                    groups: np.ndarray | None = None) -> Certified:
    """Fixed-sequence test of thresholds ``grid`` (in the given order) on calibration windows (conf, wrong; ``groups``
    int[n]: the promise is made in each group, :func:`group_pvalues`); the certified threshold answering the most
    windows wins."""
    conf = np.asarray(conf, np.float64)
    wrong = np.asarray(wrong, bool)
    grid = np.asarray(grid, np.float64)
    p = group_pvalues(conf, wrong, grid, alpha, groups)
    stop = np.flatnonzero(p > delta)
    tested = grid[: stop[0] if stop.size else len(grid)]  # rejected before the first p-value above δ
    if not tested.size:
        return Certified(float("inf"), False, len(conf), 0, 0, 1.0)
    answered = (conf[None, :] >= tested[:, None]).sum(1)
    i = int(np.argmax(answered))  # the first of the most answering, as the sequential loop kept it
    chosen = conf >= tested[i]
    return Certified(float(tested[i]), True, len(conf), int(answered[i]), int(wrong[chosen].sum()), float(p[i]))


def exceedance_level(values: np.ndarray, rate: float) -> float:
    """Smallest observed value v with mean(values ≥ v) ≤ ``rate`` (ties kept together); above the max if none.

    >>> exceedance_level(np.array([0.1, 0.1, 0.1, 0.2, 0.5]), 0.2)
    0.5
    >>> exceedance_level(np.array([0.1, 0.1, 0.1, 0.2, 0.5]), 0.4)
    0.2
    """
    v = np.sort(np.asarray(values, np.float64))
    u = np.unique(v)
    frac = (v.size - np.searchsorted(v, u, side="left")) / v.size
    ok = np.nonzero(frac <= rate)[0]
    return float(u[ok[0]]) if ok.size else float(np.nextafter(v[-1], np.inf))


def alert_level(delta_sp: np.ndarray, sp_star: float, rate: float) -> float:
    """ΔSP alert level: exceeded (≥) by at most ``rate`` of these windows, and above 1 − SP* (for SP* ≥ 0.5), the
    largest ΔSP a window at or above SP* can have, so a confident window never alerts.

    >>> alert_level(np.array([0.15, 0.15, 0.149, 0.6, 0.3]), 0.85, 0.2)  # only SP ≤ 0.25 alerts
    0.6
    >>> alert_level(np.full(10, 0.15), 0.85, 0.5) > 0.15
    True
    """
    floor = 1.0 - sp_star if sp_star >= 0.5 else 0.0
    return max(exceedance_level(delta_sp, rate), float(np.nextafter(floor, np.inf)))


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, calibration) index arrays: a fixed random half each (the first gets the extra window)."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = (n + 1) // 2
    return np.sort(perm[:cut]), np.sort(perm[cut:])
