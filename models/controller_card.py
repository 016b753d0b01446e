"""The controller section of a model card and of a recipe, as frozen dataclasses (JSON on disk).

A recipe states what to fit (:class:`ControllerSpec`: budget, SP*, candidate policies, target risk, false-novelty
rate); ``sci-monitor calibrate`` fits it on the validation split and writes a :class:`ControllerCard` (the chosen
policy, the input-check ranges, the novelty threshold, the risk-controlled threshold, the ΔSP alert levels) on the
card. Consumers read attributes, never string keys.

>>> spec = ControllerSpec(candidates=(PolicySpec("threshold", {"sp_star": 0.9}),))
>>> spec.candidate("threshold").params["sp_star"]
0.9
>>> ControllerSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class PolicySpec:
    """A stop policy by registered name (``controller.policies.POLICIES``) with its keyword parameters."""

    name: str
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ControllerSpec:
    """What calibration fits, from a recipe (or a card's ``spec``).

    t_max: MC pass budget; sp_star: SP* of ΔSP = |SP* − SP|; candidates: policies compared on validation;
    select: a policy name pinned by the recipe (None: chosen on validation); risk_alpha: target error rate among
    answered windows, held with confidence 1 − risk_delta (None: no risk rule, the policy alone abstains);
    false_novelty_rate: share of in-distribution validation windows the novelty gate may flag (None: no gate);
    knn_bank: the largest bank of training windows a kNN novelty model keeps (a random subset; its score costs one
    matmul against them per window; calibration also tries smaller banks and keeps the cheapest model within
    ``controller.calibration.NOVELTY_AUROC_TOLERANCE`` of the best; changing it needs a recalibration);
    quality_checks: fit the cheap input checks on training windows; alert_rates: shares of validation windows above
    the ΔSP warning / critical levels; spectrum_band_hz: the novelty gate judges the spectrum's shape up to this
    frequency only, the band every honest source of the modality carries (None: up to fs/2), so a recording from a
    source sampled at a lower rate, resampled to the model's, is not unfamiliar for the power it never had;
    spectrum_lines_hz: spectral lines (with their harmonics, ±2 FFT bins) the spectrum-shape detector leaves out:
    interference the modality's devices remove with a notch (ECG: 50 and 60 Hz mains), not a different signal.
    """

    t_max: int = 25
    sp_star: float = 0.85
    candidates: tuple[PolicySpec, ...] = ()
    select: str | None = None
    risk_alpha: float | None = None
    risk_delta: float = 0.1
    false_novelty_rate: float | None = None
    knn_bank: int = 10_000
    quality_checks: bool = False
    alert_rates: tuple[float, float] = (0.05, 0.01)
    spectrum_band_hz: float | None = None
    spectrum_lines_hz: tuple[float, ...] = ()

    def candidate(self, name: str) -> PolicySpec:
        for p in self.candidates:
            if p.name == name:
                return p
        raise ValueError(f"no candidate policy {name!r} (have {[p.name for p in self.candidates]})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControllerSpec:
        d = dict(d)
        cands = d.pop("candidates", ())
        if isinstance(cands, dict):  # cards written before the typed spec: {name: params}
            cands = [{"name": k, "params": v} for k, v in cands.items()]
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("alert_rates", "spectrum_lines_hz"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(candidates=tuple(PolicySpec(c["name"], dict(c["params"])) for c in cands), **kw)


@dataclass(frozen=True)
class QualityRanges:
    """Input checks fitted on training windows (see ``controller.quality``); each pair is an allowed [lo, hi].

    flat_ptp: windows whose peak-to-peak is below this are a flat line (input units); clip_fraction: largest
    allowed share of samples stuck at the window's extremes; log_rms, hf_ratio, lf_ratio: amplitude (log RMS of the
    median-removed window) and spectral shares (power above fs/4, power in the lowest non-DC bins) ranges;
    polarity: lowest allowed skewness of the stream's running template (models with a stream context; None: no
    such check, as on cards written before it).
    """

    flat_ptp: float
    clip_fraction: float
    log_rms: tuple[float, float]
    hf_ratio: tuple[float, float]
    lf_ratio: tuple[float, float]
    train_flag_rate: float = 0.0  # share of training windows failing any check (fit statistic)
    polarity: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityRanges:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class NoveltyRule:
    """Novelty gate, its density models stored beside the checkpoint (NAME.novelty.pt): ``method``
    ("mahalanobis" | "knn") on the trunk features with ``threshold``, and a Gaussian of the spectrum's shape with
    ``spectrum_threshold``; a window above either is unfamiliar. Each threshold is the conformal (1 − rate / 2)
    quantile of validation scores, so an in-distribution window is flagged with probability ≤
    ``false_novelty_rate`` (union bound)."""

    method: str
    threshold: float
    false_novelty_rate: float
    spectrum_threshold: float = float("inf")
    selection: dict[str, float] = field(default_factory=dict)  # validation AUROC vs proxy outliers per method


@dataclass(frozen=True)
class RiskRule:
    """Answer a window only if its confidence ``score`` ≥ ``threshold``; certified on validation (Learn-then-Test,
    binomial p-values, fixed-sequence testing) so that the error among answered windows is ≤ ``alpha`` with
    probability ≥ 1 − ``delta`` (with cross-fitted models: in each model's held-out windows). ``weights``: (bias,
    coefficients) of a learned score (``combined``, ``max_prob_by_class``: ``controller.risk.LEARNED``), else
    empty."""

    score: str
    threshold: float
    alpha: float
    delta: float
    certified: bool
    weights: tuple[float, ...] = ()
    # models (1: the validation split alone, else with cross-fitted models), windows, answered, errors, p_value,
    # coverage, risk: on the certification half (halves)
    validation: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RiskRule:
        return cls(**{**d, "weights": tuple(d.get("weights", ()))})

    def describe(self) -> str:
        """One line for an operator: the rule in force and what validation certified.

        >>> r = RiskRule("max_prob", 0.7, 0.02, 0.1, True, validation={"windows": 500, "answered": 450, "errors": 4})
        >>> print(r.describe().replace("; ", ";\\n"))
        answer when max_prob >= 0.7 (risk <= 2% among answered with 90% confidence;
        validation calibration half: 450 of 500 answered, 4 wrong)
        >>> r = RiskRule("max_prob", 0.7, 0.02, 0.1, True, validation={"models": 3, "windows": 1500,
        ...                                                            "answered": 1300, "errors": 20})
        >>> print(r.describe().split("; ")[1])
        calibration halves of 3 models' held-out data: 1300 of 1500 answered, 20 wrong)
        >>> print(r.describe().split(" (")[1].split(";")[0])
        risk <= 2% among answered in each model's held-out data with 90% confidence
        """
        v = self.validation
        models = v.get("models", 1)
        held = "validation calibration half" if models == 1 else f"calibration halves of {models} models' held-out data"
        where = f"{held}: {v.get('answered')} of {v.get('windows')} answered, {v.get('errors')} wrong"
        each = "" if models == 1 else " in each model's held-out data"
        promise = f"risk <= {self.alpha:.0%} among answered{each} with {1 - self.delta:.0%} confidence"
        if not self.certified:
            return f"nothing certified for {promise} ({where}): every window reaching the rule abstains"
        when = "always" if self.threshold == float("-inf") else f"when {self.score} >= {self.threshold:.4g}"
        return f"answer {when} ({promise}; {where})"


@dataclass(frozen=True)
class AlertLevels:
    """ΔSP alert levels: ``warning`` / ``critical`` are exceeded (≥) by at most ``rates`` of validation windows, and
    lie above 1 − SP* so that a window at or above SP* never alerts (``controller.risk.alert_level``)."""

    warning: float
    critical: float
    rates: tuple[float, float]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertLevels:
        return cls(d["warning"], d["critical"], tuple(d["rates"]))


@dataclass(frozen=True)
class ControllerCard:
    """What a checkpoint prescribes: the spec it was fitted from and everything fitted on validation."""

    spec: ControllerSpec
    policy: PolicySpec
    baseline_thresholds: dict[str, float] = field(default_factory=dict)  # max_prob / entropy abstention τ
    quality: QualityRanges | None = None
    novelty: NoveltyRule | None = None
    risk: RiskRule | None = None
    alerts: AlertLevels | None = None
    selection_on_validation: dict[str, Any] = field(default_factory=dict)

    @property
    def t_max(self) -> int:
        return self.spec.t_max

    @property
    def sp_star(self) -> float:
        return self.spec.sp_star

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControllerCard:
        if "spec" not in d:  # a card written before the typed spec (flat dict)
            spec = ControllerSpec.from_dict({k: d[k] for k in ("t_max", "sp_star", "candidates") if k in d})
            return cls(spec, PolicySpec(d["policy"], dict(d["params"])), dict(d.get("baseline_thresholds", {})),
                       selection_on_validation=dict(d.get("selection_on_validation", {})))

        def opt(key: str, parse: Any) -> Any:
            return None if d.get(key) is None else parse(d[key])

        return cls(ControllerSpec.from_dict(d["spec"]), PolicySpec(**d["policy"]), dict(d["baseline_thresholds"]),
                   opt("quality", QualityRanges.from_dict), opt("novelty", lambda x: NoveltyRule(**x)),
                   opt("risk", RiskRule.from_dict), opt("alerts", AlertLevels.from_dict),
                   dict(d.get("selection_on_validation", {})))
