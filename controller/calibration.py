"""Everything fitted after training, without retraining: the card's controller section and the novelty model.

`sci-monitor calibrate` (and `train`, through the same :func:`calibrate`) fits, from a model's weights:
- on the **training** split (no labels needed): the input-check ranges (the stream-context polarity bound included,
  for models that declare a context) and the novelty density model;
- on the **validation** split, cut into two fixed random halves (``controller.risk.split_halves``):
  - both halves: the temperature (NLL of the MC-mean logits; one scalar, and a half of a nearly error-free split
    would drive it towards 0);
  - the *fit* half: policy choice, novelty method and threshold, the risk
    rule's confidence score (and the ``combined`` score's weights), the candidate thresholds, the ΔSP alert levels
    and the baselines' abstention thresholds;
  - the *calibration* half: only the Learn-then-Test certification of the risk threshold, so the guarantee
    "error among answered ≤ α with probability ≥ 1 − δ" is not spent on choices made with the same windows.
- with cross-fitted models (``folds``: the recipe's models trained without other record groups, ``Recipe.cross_fit``),
  the risk rule's score, weights and threshold are fitted and certified on the pooled halves of every model's
  held-out windows, each model decided by its own temperature and gate (fitted on its held-out windows like the
  validation split's) and the chosen policy. The validation split alone holds a few patients; the errors a model
  makes on patients it never saw vary from patient to patient, and pooling more of them is what lets the rule learn
  which calls fail on new patients. The guarantee is then one for the recipe's models on unseen records (the
  checkpoint is one of them), exchangeable with the held-out ones.

Policy choice: among the candidates, the one with the best fit-half AUROC of 1 − SP for detecting misclassified
windows whose mean passes stay within a third of the budget (ties: fewer passes); if none is that cheap, the
cheapest. A recipe can pin the policy (``select``), as the paper-faithful recipes do.
Novelty method on the trunk features: the cheapest of the candidates (class-conditional Gaussians, then kNN over
banks of :data:`KNN_BANKS` training features up to the recipe's ``knn_bank``) whose score separates fit-half windows
from label-free proxy outliers made from them (time-reversed and phase-scrambled copies; see ``controller.novelty``)
within :data:`NOVELTY_AUROC_TOLERANCE` AUROC of the best candidate (a kNN score costs one matmul against its bank
per window, as much as the trunk at 10,000 rows); beside it, a Gaussian of the spectrum's shape
(``controller.quality.SignalStats.spectrum``, up to the recipe's ``spectrum_band_hz``, its ``spectrum_lines_hz``
left out), which those proxies cannot test (they keep the amplitude spectrum), so it is a design choice, not a
validated one.
Confidence score: the one with which Learn-then-Test certifies the most fit-half windows that pass the gate at the
stated risk (ties: the best misclassification AUROC); the learned scores, ``combined`` and ``max_prob_by_class``,
are judged on 5-fold cross-validated predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from controller import metrics
from controller.decision import Decider, Gate, decide, stream_context
from controller.engine import SciConfig, replay_sampler
from controller.methods import confidence_threshold, deterministic, sci
from controller.novelty import (
    KnnNovelty,
    NoveltyModel,
    SpectrumNovelty,
    conformal_threshold,
    fit_gaussian,
    fit_knn,
    fit_spectrum,
    from_state,
)
from controller.passes import SplitPasses, sample_passes
from controller.policies import Policy, make_policy
from controller.quality import SignalStats, bands_below, check, fit_ranges, lines_kept, signal_stats
from controller.risk import LEARNED, SCORES, alert_level, confidence, learn_then_test, split_halves
from controller.risk import threshold_grid as risk_grid
from models.architectures import McModel
from models.checkpoint import CHECKPOINT_DIR, ModelCard, load_density
from models.controller_card import (
    AlertLevels,
    ControllerCard,
    ControllerSpec,
    NoveltyRule,
    PolicySpec,
    QualityRanges,
    RiskRule,
)
from models.training import Arrays, fit_temperature

Log = Callable[[str], None]
CHUNK = 4096
KNN_BANKS = (1_000, 2_000, 5_000)  # smaller kNN banks tried beside the recipe's knn_bank
NOVELTY_AUROC_TOLERANCE = 0.005  # a cheaper novelty candidate is kept if its proxy AUROC is this close to the best
RISK_COVERAGE_TOLERANCE = 0.005  # risk scores whose fit-half certified coverage is this close tie (then: AUROC)


@dataclass(frozen=True)
class Calibration:
    temperature: float
    controller: ControllerCard
    novelty: dict[str, NoveltyModel] | None  # {"trunk": ..., "spectrum": ...}, to store beside the checkpoint


def policies_from(candidates: tuple[PolicySpec, ...]) -> dict[str, Policy]:
    return {p.name: make_policy(p.name, **p.params) for p in candidates}


def _r(x: float, nd: int = 5) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


@torch.inference_mode()
def _trunk_and_stats(model: McModel, data: Arrays, device: torch.device | str) -> tuple[torch.Tensor, SignalStats]:
    hs, st = [], []
    for i in range(0, len(data), CHUNK):
        x = torch.as_tensor(data.x[i : i + CHUNK], dtype=torch.float32, device=device)
        aux = None if data.aux is None else torch.as_tensor(data.aux[i : i + CHUNK], dtype=torch.float32,
                                                             device=device)
        hs.append(model.trunk(x, aux).cpu())
        st.append(signal_stats(x, stream_context(model, aux)).to("cpu"))
    return torch.cat(hs), SignalStats.cat(st)


def proxy_outliers(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Label-free stand-ins for unfamiliar inputs, used only to choose the novelty method: each window
    time-reversed, and phase-scrambled (same amplitude spectrum, random phases); float32[2N, L]."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(x, axis=1)
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, spec.shape))
    phase[:, 0] = 1.0
    scrambled = np.fft.irfft(np.abs(spec) * phase, n=x.shape[1], axis=1)
    return np.concatenate([x[:, ::-1], scrambled]).astype(np.float32)


def _fit_novelty(model: McModel, train_h: torch.Tensor, train_y: np.ndarray, fit: Arrays, fit_h: torch.Tensor,
                 n_classes: int, device: torch.device | str, knn_bank: int) -> tuple[NoveltyModel, dict[str, float]]:
    y = torch.as_tensor(train_y, dtype=torch.int64)
    # cheapest first: the Gaussians cost a [D, D] product per window, kNN one matmul against its bank
    candidates: dict[str, NoveltyModel] = {"mahalanobis": fit_gaussian(train_h, y, n_classes)}
    for bank in sorted({min(b, knn_bank, len(train_h)) for b in (*KNN_BANKS, knn_bank)}):
        candidates[f"knn_{bank}"] = fit_knn(train_h, bank=bank, y=y)
    px = proxy_outliers(fit.x)
    aux = None if fit.aux is None else np.concatenate([fit.aux, fit.aux])
    proxy_h, _ = _trunk_and_stats(model, Arrays(px, aux, np.zeros(len(px), np.int64)), device)
    is_proxy = np.r_[np.zeros(len(fit_h), bool), np.ones(len(proxy_h), bool)]
    aurocs = {name: metrics.auroc(torch.cat([m.score(fit_h), m.score(proxy_h)]).numpy(), is_proxy)
              for name, m in candidates.items()}
    return candidates[cheapest_within(aurocs)], {f"auroc_proxy_{k}": _r(v) for k, v in aurocs.items()}


def cheapest_within(aurocs: dict[str, float], tolerance: float = NOVELTY_AUROC_TOLERANCE) -> str:
    """The first (cheapest) candidate of ``aurocs`` (ordered cheapest first) whose AUROC is within ``tolerance`` of the
    best (NaN counts as worst).

    >>> cheapest_within({"mahalanobis": 0.90, "knn_1000": 0.957, "knn_10000": 0.960})
    'knn_1000'
    >>> cheapest_within({"mahalanobis": float("nan"), "knn_1000": 0.80, "knn_10000": 0.96})
    'knn_10000'
    """
    score = {k: -1.0 if np.isnan(v) else v for k, v in aurocs.items()}
    top = max(score.values())
    return next(k for k, v in score.items() if v >= top - tolerance)


def _choose_policy(fit: SplitPasses, spec: ControllerSpec, cfg: SciConfig) -> tuple[str, dict[str, dict]]:
    report: dict[str, dict[str, float]] = {}
    for name, policy in policies_from(spec.candidates).items():
        o = sci(fit, policy, cfg)
        err = o.label != fit.y
        report[name] = {"auroc_1_minus_sp": _r(metrics.auroc(1 - o.sp, err)), "mean_passes": _r(o.passes.mean()),
                        "abstain_rate": _r(o.abstained.mean()), "error": _r(err.mean())}
    return spec.select or _select(report, spec.t_max), report


def _select(report: dict[str, dict[str, float]], t_max: int) -> str:
    cheap = {k: v for k, v in report.items() if v["mean_passes"] <= t_max / 3}
    if not cheap:
        return min(report, key=lambda k: report[k]["mean_passes"])
    return max(cheap, key=lambda k: (cheap[k]["auroc_1_minus_sp"] or -1, -cheap[k]["mean_passes"]))


def _score_inputs(r: Any, det_logits: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    return {"probs": torch.as_tensor(r.probs), "sp": torch.as_tensor(r.sp),
            "det_probs": torch.softmax(det_logits / temperature, dim=1), "novelty": torch.as_tensor(r.novelty)}


class RiskPart(NamedTuple):
    """One model's validation evidence for the risk rule: the fit and calibration halves of its held-out windows'
    passes and its decider (gate, policy, temperature; no rule yet)."""

    fit: SplitPasses
    cal: SplitPasses
    decider: Decider


def _reached(passes: SplitPasses, decider: Decider) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The confidence scores' inputs and the error flags (bool[n]) of the n windows of ``passes`` that pass the gate
    of ``decider`` and reach the policy, as ``decide`` sees them."""
    r = decide(passes.evidence(), replay_sampler(passes.mc), decider)
    keep = r.passes > 0
    inputs = _score_inputs(r, passes.deterministic, decider.config.temperature)
    return {k: v[torch.as_tensor(keep)] for k, v in inputs.items()}, (r.label != passes.y)[keep]


def _pooled(parts: list[tuple[dict[str, torch.Tensor], np.ndarray]]
            ) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """The parts' score inputs and error flags concatenated, and int64[n] which part each window came from."""
    groups = np.concatenate([np.full(len(p[1]), i, np.int64) for i, p in enumerate(parts)])
    return {k: torch.cat([p[0][k] for p in parts]) for k in parts[0][0]}, np.concatenate([p[1] for p in parts]), groups


def fit_risk(parts: Sequence[RiskPart], alpha: float, delta: float) -> tuple[RiskRule, dict[str, Any]]:
    """The risk rule for target risk ``alpha`` at confidence 1 − ``delta``, from the held-out windows of one model
    (its validation split) or of several cross-fitted models (each scored with its own decider). With several, the
    promise is made for each model's held-out patients, not for their pool (``controller.risk.group_pvalues``):
    one group of patients on whom the model fails more often cannot hide behind the others' right answers.

    On the fit halves' windows that pass the gate, each confidence score (learned ones fitted on the pooled fit
    halves, with 5-fold cross-validated predictions, so they compete on held-out windows) gets the coverage
    Learn-then-Test would certify with it there, what the rule is for, and its misclassification AUROC; the score
    answering the most (ties within :data:`RISK_COVERAGE_TOLERANCE`: the best AUROC) has its threshold certified on
    the calibration halves. Returns the rule and, per score, those fit-half numbers."""
    (inf, wf, gf), (inc, wc, gc) = (_pooled([_reached(getattr(p, half), p.decider) for p in parts])
                                    for half in ("fit", "cal"))
    has_novelty = bool(torch.isfinite(inf["novelty"]).all())
    aurocs: dict[str, float | None] = {}
    coverage: dict[str, float] = {}
    weights: dict[str, tuple[float, ...]] = {}
    for score in SCORES:
        if score in LEARNED:
            if (score == "combined" and not has_novelty) or wf.sum() < 10:
                continue
            x = LEARNED[score](inf["probs"], inf["det_probs"], inf["novelty"]).numpy()
            lr = LogisticRegression(max_iter=1000)
            c = 1 - cross_val_predict(lr, x, wf, cv=5, method="predict_proba")[:, 1]
            lr.fit(x, wf)
            weights[score] = (float(lr.intercept_[0]), *map(float, lr.coef_[0]))
        else:
            c = confidence(score, **inf).numpy()
        aurocs[score] = _r(metrics.auroc(1 - c, wf))
        smallest = int(np.bincount(gf).min())
        own = learn_then_test(c, wf, risk_grid(c, wf, smallest, alpha, delta, groups_fit=gf), alpha, delta, gf)
        coverage[score] = _r(own.answered / max(len(c), 1))
    top = max(coverage.values())
    near = [k for k in coverage if coverage[k] >= top - RISK_COVERAGE_TOLERANCE]
    best = max(near, key=lambda k: aurocs[k] if aurocs[k] is not None else -1)
    w = weights.get(best, ())
    conf_f = confidence(best, **inf, weights=w).numpy()
    conf_c = confidence(best, **inc, weights=w).numpy()
    grid = risk_grid(conf_f, wf, int(np.bincount(gc).min()), alpha, delta, groups_fit=gf)
    cert = learn_then_test(conf_c, wc, grid, alpha, delta, gc)
    answered = int(cert.answered)
    rule = RiskRule(best, cert.threshold, alpha, delta, cert.certified, tuple(round(x, 6) for x in w), {
        "models": len(parts), "windows": cert.n, "answered": answered, "errors": cert.errors,
        "p_value": _r(cert.p_value, 6), "coverage": _r(answered / max(cert.n, 1)),
        "risk": _r(cert.errors / answered) if answered else None})
    return rule, {"coverage_at_alpha": coverage, "auroc_misclassification": aurocs}


@dataclass(frozen=True)
class Fold:
    """A model of the same recipe trained without the records of ``held_out`` (cross-fitting): its decisions on them
    show how the recipe's models err on patients (or machines) they never saw. ``name``: which records."""

    name: str
    model: McModel
    train: Arrays
    held_out: Arrays


def calibrate(model: McModel, train: Arrays, val: Arrays, spec: ControllerSpec, temperature: float | None,
              n_classes: int, device: torch.device | str = "cpu", log: Log = lambda _: None,
              fs: float | None = None, folds: Sequence[Fold] = (), passes: SplitPasses | None = None
              ) -> Calibration:
    """Fit the controller section of a card from a model's weights (see the module docstring for what and where);
    ``fs``: the model's input rate in Hz, needed when ``spec.spectrum_band_hz`` limits the spectrum detector.
    ``folds``: cross-fitted models whose held-out windows, each calibrated like ``val`` (same policy, their own
    temperature and gate), join the risk rule's evidence (:func:`fit_risk`). ``passes``: the validation windows'
    passes when they are already drawn (``sample_passes(model, val, spec.t_max)``)."""
    if passes is None:
        passes = sample_passes(model, val, spec.t_max, device)
    fit_idx, cal_idx = split_halves(len(val))
    fit, cal = passes.subset(fit_idx), passes.subset(cal_idx)
    fit_arrays = Arrays(val.x[fit_idx], None if val.aux is None else val.aux[fit_idx], val.y[fit_idx])
    if temperature is None:  # on the whole split: a half of a near-error-free split drives the NLL's T towards 0
        temperature = fit_temperature(passes.mc.mean(1), torch.as_tensor(passes.y))
    cfg = SciConfig(temperature, spec.t_max, spec.sp_star)
    chosen, policy_report = _choose_policy(fit, spec, cfg)
    policy = make_policy(chosen, **spec.candidate(chosen).params)
    selection: dict[str, Any] = {"halves": {"fit": len(fit_idx), "calibration": len(cal_idx)},
                                 "policies": policy_report}
    log(f"temperature {temperature:.4f} (validation), policy {chosen} (validation fit half)")

    quality: QualityRanges | None = None
    novelty_model: NoveltyModel | None = None
    spectrum_model: NoveltyModel | None = None
    novelty_models: dict[str, NoveltyModel] | None = None
    novelty_rule: NoveltyRule | None = None
    if spec.quality_checks or spec.false_novelty_rate is not None:
        train_h, train_stats = _trunk_and_stats(model, train, device)
        if spec.quality_checks:
            quality = fit_ranges(train_stats)
            log(f"input checks fitted on {len(train)} training windows (flag rate {quality.train_flag_rate:.4%})")
        if spec.false_novelty_rate is not None:
            novelty_model, sel = _fit_novelty(model, train_h, train.y, fit_arrays, fit.trunk, n_classes, device,
                                              spec.knn_bank)
            n_bands = bands_below(model.input_length, fs, spec.spectrum_band_hz)
            keep = lines_kept(model.input_length, fs, spec.spectrum_lines_hz)
            spectrum_model = fit_spectrum(train_stats.spectrum, n_bands, keep, torch.as_tensor(train.y), n_classes)
            passed = torch.ones(len(fit.y), dtype=torch.bool) if quality is None else check(fit.signal, quality) == 0
            half = spec.false_novelty_rate / 2  # two detectors: union bound
            thr = conformal_threshold(novelty_model.score(fit.trunk)[passed], half)
            spec_thr = conformal_threshold(spectrum_model.score(fit.signal.spectrum)[passed], half)
            novelty_rule = NoveltyRule(novelty_model.method, thr, spec.false_novelty_rate, spec_thr, sel)
            novelty_models = {"trunk": novelty_model, "spectrum": spectrum_model}
            bank = f" over {len(novelty_model.bank)} training features" if isinstance(novelty_model, KnnNovelty) else ""
            log(f"novelty {novelty_model.method}{bank} (proxy AUROCs {sel}), thresholds {thr:.4g} (trunk), "
                f"{spec_thr:.4g} (spectrum)")
    gate = Gate(quality, novelty_model, novelty_rule.threshold if novelty_rule else float("inf"),
                spectrum_model, novelty_rule.spectrum_threshold if novelty_rule else float("inf"))
    decider = Decider(policy, cfg, gate)

    risk: RiskRule | None = None
    if spec.risk_alpha is not None:
        parts = [RiskPart(fit, cal, decider)]
        for i, fold in enumerate(folds, 1):
            log(f"cross-fitted model {i}/{len(folds)} (held out {fold.name}): calibrating it like this one")
            fold_passes = sample_passes(fold.model, fold.held_out, spec.t_max, device)
            sub = calibrate(fold.model, fold.train, fold.held_out, replace(spec, select=chosen, risk_alpha=None),
                            None, n_classes, device, lambda m, i=i: log(f"  fold {i}: {m}"), fs, passes=fold_passes)
            f_idx, c_idx = split_halves(len(fold.held_out))
            parts.append(RiskPart(fold_passes.subset(f_idx), fold_passes.subset(c_idx), decider_of(sub)))
        risk, sel = fit_risk(parts, spec.risk_alpha, spec.risk_delta)
        selection["risk_scores"] = sel
        if folds:
            selection["risk_models"] = _risk_by_model(parts, risk, ["validation", *(f.name for f in folds)])
        decider = replace(decider, risk=risk)
        log(f"risk rule ({risk.score}, threshold {risk.threshold:.6g}): {risk.describe()}")

    r = decide(fit.evidence(), replay_sampler(fit.mc), decider)
    wrong = r.label != fit.y
    selection["controller_fit_half"] = {
        "escalation_rate": _r(r.abstained.mean()),
        "risk_answered": _r(wrong[~r.abstained].mean()) if (~r.abstained).any() else None,
        "signal_quality_rate": _r((r.quality != 0).mean()),
        "unfamiliar_rate": _r(((r.quality == 0) & (r.passes == 0)).mean()), "mean_passes": _r(r.passes.mean(), 3)}
    policy_done = r.passes > 0
    alerts = AlertLevels(*(alert_level(r.delta_sp[policy_done], spec.sp_star, rate) for rate in spec.alert_rates),
                         spec.alert_rates)
    det = deterministic(fit, cfg)
    rate = float(r.abstained.mean())
    baselines = {"max_prob": confidence_threshold(det.max_prob, rate), "entropy": confidence_threshold(det.sp, rate)}
    card = ControllerCard(spec, PolicySpec(chosen, dict(spec.candidate(chosen).params)), baselines, quality,
                          novelty_rule, risk, alerts, selection)
    return Calibration(temperature, card, novelty_models)


def _risk_by_model(parts: Sequence[RiskPart], risk: RiskRule, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per model of the risk rule's evidence: what the rule does on its calibration half (escalation, risk)."""
    out = {}
    for name, p in zip(names, parts, strict=True):
        r = decide(p.cal.evidence(), replay_sampler(p.cal.mc), replace(p.decider, risk=risk))
        wrong = r.label != p.cal.y
        out[name] = {"temperature": _r(p.decider.config.temperature), "windows": len(wrong),
                     "escalation_rate": _r(r.abstained.mean()),
                     "risk_answered": _r(wrong[~r.abstained].mean()) if (~r.abstained).any() else None}
    return out


def _decider(c: ControllerCard, temperature: float, trunk: NoveltyModel | None,
             spectrum: NoveltyModel | None) -> Decider:
    inf = float("inf")
    gate = Gate(c.quality, trunk, c.novelty.threshold if c.novelty else inf, spectrum,
                c.novelty.spectrum_threshold if c.novelty else inf)
    return Decider(make_policy(c.policy.name, **c.policy.params), SciConfig(temperature, c.t_max, c.sp_star),
                   gate, c.risk)


def decider_of(cal: Calibration) -> Decider:
    """The decider a fresh calibration prescribes (as :func:`decider_from_card` once it is saved)."""
    models = cal.novelty or {}
    return _decider(cal.controller, cal.temperature, models.get("trunk"), models.get("spectrum"))


def decider_from_card(card: ModelCard, directory: Path = CHECKPOINT_DIR) -> Decider:
    """The policy, SciConfig, gate and risk rule a checkpoint's card prescribes (novelty model from ``directory``)."""
    c = card.controller
    if c.novelty is None:
        return _decider(c, card.temperature, None, None)
    state = load_density(card.name, directory)
    if state is None:
        raise FileNotFoundError(f"checkpoint {card.name} needs {card.name}.novelty.pt in {directory}; "
                                "run `sci-monitor calibrate`")
    spectrum = from_state(state["spectrum"])
    if not isinstance(spectrum, SpectrumNovelty):  # a Gaussian of unwindowed band shares, before the detector
        raise ValueError(f"checkpoint {card.name}: its spectrum detector was fitted by an older version; "
                         f"recalibrate it (`sci-monitor calibrate --dataset {card.name}`)")
    return _decider(c, card.temperature, from_state(state["trunk"]), spectrum)
