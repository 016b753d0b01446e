"""The controller's decision: gate reasons, no MC pass for gated windows, the risk rule, and one code path for
`evaluate` (precomputed passes) and the live SciController."""

import math

import numpy as np
import pytest
import torch

import controller.decision as decision
from controller.calibration import decider_from_card
from controller.decision import Decider, Evidence, Gate, decide, evidence, trunk_features
from controller.engine import SciConfig, replay_sampler
from controller.methods import controller
from controller.novelty import fit_gaussian, fit_spectrum
from controller.passes import eval_keys, sample_passes
from controller.policies import Threshold
from controller.quality import QualityFlag, band_edges, fit_ranges, signal_stats
from controller.reasons import Reason
from controller.sci import SciController
from models.architectures import BearingFrameNet
from models.checkpoint import available_checkpoints, load_checkpoint
from models.controller_card import ControllerCard, QualityRanges, RiskRule
from models.keyed_dropout import PassNoise
from models.training import Arrays

OPEN_RANGES = QualityRanges(flat_ptp=1e-3, clip_fraction=0.5, log_rms=(-50, 50), hf_ratio=(-1, 2), lf_ratio=(-1, 2))


def _evidence(det: list[list[float]], trunk: list[list[float]], x: np.ndarray) -> Evidence:
    return Evidence(torch.tensor(det), torch.tensor(trunk), signal_stats(torch.tensor(x, dtype=torch.float32)))


def _recording_sampler(logits: torch.Tensor, seen: set[int]):
    def sampler(idx: torch.Tensor, t: int) -> torch.Tensor:
        seen.update(idx.tolist())
        return logits[idx, t - 1]

    return sampler


def _gaussian_near_origin():
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.normal(size=(400, 2)), dtype=torch.float32)
    return fit_gaussian(h, torch.zeros(400, dtype=torch.int64), 1)


def test_gated_windows_abstain_with_their_reason_and_spend_no_pass():
    t_max = 6
    x = np.sin(np.linspace(0, 20, 64))[None].repeat(4, 0)
    x[0] = 0.3  # flat line
    ev = _evidence([[3.0, 0.0]] * 4, [[0.0, 0.0], [40.0, 40.0], [0.1, 0.0], [0.0, 0.1]], x)
    logits = torch.tensor([[[6.0, 0.0]] * t_max, [[6.0, 0.0]] * t_max, [[6.0, 0.0]] * t_max,
                           [[0.0, 0.0]] * t_max])
    seen: set[int] = set()
    d = Decider(Threshold(sp_star=0.8, t_min=2), SciConfig(1.0, t_max, 0.85),
                Gate(OPEN_RANGES, _gaussian_near_origin(), novelty_threshold=9.0))  # novelty = Mahalanobis² / 9
    r = decide(ev, _recording_sampler(logits, seen), d)
    assert [Reason(c) for c in r.reason] == [Reason.SIGNAL_QUALITY, Reason.UNFAMILIAR, Reason.THRESHOLD,
                                             Reason.BUDGET]
    assert r.passes.tolist() == [0, 0, 2, t_max] and seen == {2, 3}
    assert r.abstained.tolist() == [True, True, False, True]
    assert r.quality.tolist() == [int(QualityFlag.FLAT), 0, 0, 0]
    assert r.novelty[1] > 1.0 > r.novelty[2]
    # a gated window reports the plain pass's label and probabilities
    p = 1 / (1 + math.exp(-3.0))
    np.testing.assert_allclose(r.probs[1], [p, 1 - p], rtol=1e-6)


def test_risk_rule_answers_only_confident_windows_whatever_the_policy_said():
    t_max = 5
    x = np.sin(np.linspace(0, 20, 64))[None].repeat(3, 0)
    ev = _evidence([[0.0, 0.0]] * 3, [[0.0, 0.0]] * 3, x)
    # window 0: max prob 0.95, SP below SP* = 0.9 → the policy runs to the budget, the rule answers (confident)
    # window 1: max prob 0.88 < 0.9, SP ≥ 0.3 → the policy stops, the rule abstains (ambiguous)
    # window 2: uniform → budget, abstained
    z0 = math.log(0.95 / 0.05)
    z1 = math.log(0.88 / 0.12)
    logits = torch.tensor([[[z0, 0.0]] * t_max, [[z1, 0.0]] * t_max, [[0.0, 0.0]] * t_max])
    rule = RiskRule("max_prob", threshold=0.9, alpha=0.02, delta=0.1, certified=True)
    for sp_star, expected in ((0.9, [Reason.CONFIDENT, Reason.BUDGET, Reason.BUDGET]),
                              (0.3, [Reason.THRESHOLD, Reason.AMBIGUOUS, Reason.BUDGET])):
        d = Decider(Threshold(sp_star=sp_star, t_min=2), SciConfig(1.0, t_max, 0.85), Gate(), rule)
        r = decide(ev, replay_sampler(logits), d)
        assert [Reason(c) for c in r.reason] == expected, sp_star
        assert r.abstained.tolist() == [Reason(c).label in ("budget", "ambiguous") for c in r.reason]
        np.testing.assert_allclose(r.confidence, [0.95, 0.88, 0.5], rtol=1e-5)


def test_live_controller_and_offline_evaluation_take_the_same_decisions():
    torch.manual_seed(0)
    model = BearingFrameNet(4).eval()
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 1024)).astype(np.float32)
    x = np.concatenate([rng.normal(size=(40, 1024)), 5 * rng.normal(size=(10, 1024)),
                        np.zeros((4, 1024))]).astype(np.float32)
    with torch.inference_mode():
        h = model.trunk(torch.tensor(train))
    novelty = fit_gaussian(h, torch.zeros(300, dtype=torch.int64), 1)
    stats = signal_stats(torch.tensor(train))
    spectrum = fit_spectrum(stats.spectrum, len(band_edges(512)) - 1)
    gate = Gate(fit_ranges(stats), novelty, float(novelty.score(h).quantile(0.9)), spectrum,
                float(spectrum.score(stats.spectrum).quantile(0.99)))
    rule = RiskRule("max_prob_det", threshold=0.3, alpha=0.02, delta=0.1, certified=True)
    d = Decider(Threshold(sp_star=0.2, t_min=2), SciConfig(1.0, 8, 0.85), gate, rule)
    passes = sample_passes(model, Arrays(x, None, np.zeros(len(x), np.int64)), 8, key_offset=123)
    _, offline = controller(passes, d)
    live = SciController(model, d.policy, d.config, gate=gate, risk=rule).classify(x, None, eval_keys(len(x), 123))
    for field in ("label", "passes", "reason", "abstained", "quality"):
        np.testing.assert_array_equal(getattr(live, field), getattr(offline, field), err_msg=field)
    for field in ("probs", "sp", "novelty", "confidence"):
        np.testing.assert_allclose(getattr(live, field), getattr(offline, field), rtol=1e-5, atol=1e-6)
    reasons = {Reason(c).label for c in live.reason}
    assert {"signal_quality", "unfamiliar"} <= reasons  # the crafted windows reach the gate


def test_input_statistics_are_computed_only_for_a_gate_that_reads_them(monkeypatch):
    torch.manual_seed(0)
    model = BearingFrameNet(4).eval()
    x = np.random.default_rng(1).normal(size=(12, 1024)).astype(np.float32)
    d = Decider(Threshold(sp_star=0.5, t_min=2), SciConfig(1.0, 6, 0.85))
    keys = eval_keys(len(x), 7)
    with_stats = decide(*_sampled(model, x, keys, signal=True), d)
    # a controller without input checks never computes the statistics
    monkeypatch.setattr(decision, "signal_stats", lambda *_: pytest.fail("statistics computed for no check"))
    ctrl = SciController(model, d.policy, d.config)
    r = ctrl.classify(x, None, keys)
    for field in ("label", "passes", "reason", "probs", "sp"):
        np.testing.assert_array_equal(getattr(r, field), getattr(with_stats, field), err_msg=field)
    # a gate with input checks needs them: evidence without statistics is refused
    gated = Decider(d.policy, d.config, Gate(OPEN_RANGES))
    with pytest.raises(ValueError, match="input statistics"):
        decide(*_sampled(model, x, keys, signal=False), gated)


def test_trunk_features_in_calls_of_a_few_windows_keep_the_windows_in_order():
    torch.manual_seed(0)
    model = BearingFrameNet(4).eval()
    x = torch.tensor(np.random.default_rng(2).normal(size=(10, 1024)), dtype=torch.float32)
    with torch.inference_mode():
        whole = model.trunk(x)
        for rows in (3, 4, 10, None):  # (tiny calls may round differently in the last bits)
            torch.testing.assert_close(trunk_features(model, x, None, rows), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(evidence(model, x, None, trunk_rows=4).trunk, whole, rtol=1e-5, atol=1e-5)


def _sampled(model, x, keys, signal):
    with torch.inference_mode():
        ev = evidence(model, torch.tensor(x), None, signal=signal)
    return ev, lambda idx, t: model.head(ev.trunk[idx], PassNoise(keys[idx], t))


def test_a_card_whose_spectrum_detector_is_from_an_older_version_says_to_recalibrate(tmp_path):
    import shutil

    from models.checkpoint import CHECKPOINT_DIR, load_density, save_density

    for f in CHECKPOINT_DIR.glob("cwru.*"):
        shutil.copy(f, tmp_path / f.name)
    _, card = load_checkpoint("cwru", directory=tmp_path)
    state = load_density("cwru", tmp_path)
    save_density("cwru", {**state, "spectrum": state["spectrum"]["density"]}, tmp_path)  # a bare Gaussian, as once
    with pytest.raises(ValueError, match="recalibrate it"):
        decider_from_card(card, tmp_path)


def test_every_committed_card_round_trips_and_builds_its_controller():
    for name in available_checkpoints():
        _, card = load_checkpoint(name)
        assert ControllerCard.from_dict(card.controller.to_dict()) == card.controller
        d = decider_from_card(card)
        assert d.config.t_max == card.controller.t_max and d.policy.name == card.controller.policy.name
        if card.controller.novelty is not None:
            assert d.gate.novelty.method == card.controller.novelty.method


def test_novelty_is_the_larger_of_the_two_detectors_relative_to_their_thresholds():
    x = np.sin(np.linspace(0, 20, 64))[None].repeat(2, 0)
    stats = signal_stats(torch.tensor(x, dtype=torch.float32))
    ev = Evidence(torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [3.0, 0.0]]), stats)
    trunk = _gaussian_near_origin()
    g = torch.Generator().manual_seed(0)
    spread = 1 + 0.2 * torch.rand(50, stats.spectrum.shape[1], generator=g)  # a well-conditioned fit
    spectrum = fit_spectrum(stats.spectrum.repeat(25, 1) * spread, len(band_edges(32)) - 1)
    assert spectrum.score(stats.spectrum).max() < 1e3  # so at a threshold of 1e9 it cannot be the larger
    gate = Gate(None, trunk, 4.0, spectrum, 1e9)
    expected = trunk.score(ev.trunk) / 4.0
    torch.testing.assert_close(gate.novelty_score(ev, torch.device("cpu")), expected)
    hiss = torch.randn(2, 64, generator=g)  # a spectrum unlike the fitted one: the spectrum detector dominates
    far = Evidence(ev.deterministic, ev.trunk, signal_stats(hiss))
    assert (spectrum.score(far.signal.spectrum) > 1.0).all()
    gate = Gate(None, trunk, 4.0, spectrum, 1e-9)
    torch.testing.assert_close(gate.novelty_score(far, torch.device("cpu")), spectrum.score(far.signal.spectrum) / 1e-9)
