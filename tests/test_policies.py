"""Each stop rule on scripted logit sequences, and the batched engine against the per-window oracle."""

import math

import numpy as np
import pytest
import torch
from sci_oracle import run_one

from controller.engine import SciConfig, replay_sampler, run_sci
from controller.policies import (
    PaperPlateau,
    SeparationBound,
    Threshold,
    make_policy,
)
from controller.reasons import Reason


def run(seq: list[list[float]] | np.ndarray, policy, t_max: int = 25, temperature: float = 1.0):
    z = torch.tensor(np.asarray(seq, dtype=np.float32))[None]  # [1, T, K]
    return run_sci(replay_sampler(z), 1, z.shape[2], policy, SciConfig(temperature, t_max, 0.85))


def constant(z: list[float], t: int = 25) -> np.ndarray:
    return np.tile(np.asarray(z, dtype=np.float32), (t, 1))


def test_plateau_stops_at_t_min_on_confident_constant_passes():
    r = run(constant([6.0, 0.0]), PaperPlateau(t_min=4))
    assert (r.passes[0], Reason(r.reason[0]).label, bool(r.abstained[0])) == (4, "plateau", False)
    # p = (e^6, 1)/(e^6 + 1) → SP = 0.9819..., ΔSP = |0.85 − SP|
    p = 1 / (1 + math.exp(-6))
    sp = 1 + (p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)
    assert r.sp[0] == pytest.approx(sp, abs=1e-6)
    assert r.delta_sp[0] == pytest.approx(abs(0.85 - sp), abs=1e-6)


def test_plateau_below_floor_runs_to_budget_and_abstains():
    r = run(constant([0.5, 0.0]), PaperPlateau(t_min=4, sp_floor=0.8), t_max=10)
    assert (r.passes[0], r.reason[0], bool(r.abstained[0])) == (10, Reason.BUDGET, True)
    assert r.label[0] == 0  # the label is still reported


def test_plateau_waits_for_sp_to_settle():
    # passes 1-4 disagree, then agree: SP(t) moves until the running mean settles
    seq = np.array([[4, 0], [0, 4], [4, 0], [0, 4]] + [[8, 0]] * 21, dtype=np.float32)
    r = run(seq, PaperPlateau(t_min=4, eps=0.005, sp_floor=0.8))
    # hand-check with the oracle's formula
    sps = []
    for t in range(1, 26):
        m = seq[:t].mean(0)
        p = np.exp(m - m.max()) / np.exp(m - m.max()).sum()
        sps.append(1 + (p * np.log(np.clip(p, 1e-9, None))).sum() / math.log(2))
    expected = next(t for t in range(4, 26) if abs(sps[t - 1] - sps[t - 3]) < 0.005 and sps[t - 1] > 0.8)
    assert r.passes[0] == expected and r.reason[0] == Reason.PLATEAU and expected > 4


def test_abstain_floor_abstains_early():
    r = run(constant([0.1, 0.0]), PaperPlateau(t_min=4, abstain_floor=0.2))
    assert (r.passes[0], r.reason[0], bool(r.abstained[0])) == (4, Reason.LOW_SP, True)


def test_threshold_rule():
    # SP of (2, 0) is 0.4 < 0.85; the mean logit grows as confident passes arrive until SP ≥ SP*
    seq = np.array([[2, 0]] * 3 + [[12, 0]] * 22, dtype=np.float32)
    r = run(seq, Threshold(sp_star=0.85, t_min=2))
    assert r.reason[0] == Reason.THRESHOLD
    means = np.cumsum(seq[:, 0]) / np.arange(1, 26)
    p = 1 / (1 + np.exp(-means))
    sp = 1 + (p * np.log(p) + (1 - p) * np.log(1 - p)) / math.log(2)
    assert r.passes[0] == 1 + int(np.argmax((sp >= 0.85) & (np.arange(1, 26) >= 2)))
    assert run(constant([9.0, 0.0]), Threshold(t_min=2)).passes[0] == 2


def test_separation_bound_stops_when_passes_agree_and_abstains_when_they_flip():
    agree = run(constant([3.0, 1.0, 0.0]), SeparationBound(z=2.0, t_min=3))
    assert (agree.passes[0], agree.reason[0]) == (3, Reason.SEPARATED)
    flip = np.array([[3, 0, 0], [0, 3, 0]] * 13, dtype=np.float32)[:25]
    r = run(flip, SeparationBound(z=2.0, t_min=3))
    assert (r.passes[0], r.reason[0], bool(r.abstained[0])) == (25, Reason.BUDGET, True)


def test_separation_bound_variance_matches_hand_computation():
    # gaps of p(top) − p(second) over 3 passes; stop iff mean − z·sd/√3 > 0
    seq = np.array([[2, 0], [1, 0], [3, 0]], dtype=np.float32)
    p0 = 1 / (1 + np.exp(-seq[:, 0]))
    d = p0 - (1 - p0)
    lcb = d.mean() - 2.0 * d.std(ddof=1) / math.sqrt(3)
    assert lcb > 0
    assert run(seq, SeparationBound(z=2.0, t_min=3), t_max=3).reason[0] == Reason.SEPARATED
    z_block = d.mean() / (d.std(ddof=1) / math.sqrt(3)) + 0.01  # just too strict
    assert run(seq, SeparationBound(z=z_block, t_min=3), t_max=3).reason[0] == Reason.BUDGET


def test_make_policy_rejects_unknown_names():
    assert isinstance(make_policy("paper", eps=0.01), PaperPlateau)
    with pytest.raises(ValueError, match="unknown SCI policy"):
        make_policy("nope")


@pytest.mark.parametrize("policy", [
    PaperPlateau(t_min=4, eps=0.005, sp_floor=0.8),
    PaperPlateau(t_min=4, eps=0.02, sp_floor=0.5, abstain_floor=0.3),
    Threshold(sp_star=0.85, t_min=2),
    SeparationBound(z=2.0, t_min=3),
    SeparationBound(z=1.0, margin=0.2, t_min=5),
], ids=lambda p: repr(p))
def test_batched_engine_matches_per_window_oracle(policy):
    gen = torch.Generator().manual_seed(7)
    b, t_max, k = 300, 25, 4
    # windows of varied difficulty: a per-window mean logit vector plus per-pass noise of varied scale
    centre = torch.randn(b, 1, k, generator=gen) * torch.rand(b, 1, 1, generator=gen) * 6
    noise = torch.randn(b, t_max, k, generator=gen) * torch.rand(b, 1, 1, generator=gen) * 3
    z = centre + noise
    cfg = SciConfig(temperature=0.7, t_max=t_max, sp_star=0.85)
    res = run_sci(replay_sampler(z), b, k, policy, cfg)
    oracle = [run_one(z[i].numpy().astype(np.float64), policy, 0.7, t_max) for i in range(b)]
    labels, passes, reasons, sps = (np.array(c) for c in zip(*oracle, strict=True))
    np.testing.assert_array_equal(res.passes, passes)
    np.testing.assert_array_equal(res.reason, reasons)
    np.testing.assert_array_equal(res.label, labels)
    np.testing.assert_allclose(res.sp, sps, atol=1e-5)
    assert len(set(res.passes.tolist())) > 3  # the stream really exercises early and late stops


@pytest.mark.parametrize("policy", [PaperPlateau(t_min=4, eps=0.02, sp_floor=0.5, abstain_floor=0.3),
                                    Threshold(sp_star=0.85, t_min=2), SeparationBound(z=1.0, t_min=3)],
                         ids=lambda p: p.name)
def test_drawing_passes_ahead_in_blocks_changes_nothing(policy):
    gen = torch.Generator().manual_seed(11)
    b, t_max, k = 200, 25, 3
    z = torch.randn(b, 1, k, generator=gen) * 4 + torch.randn(b, t_max, k, generator=gen) * 2
    cfg = SciConfig(temperature=1.3, t_max=t_max, sp_star=0.85)
    one_at_a_time = run_sci(replay_sampler(z), b, k, policy, cfg, block_rows=1)  # one pass per round
    assert len(set(one_at_a_time.passes.tolist())) > 3
    for block_rows in (7, 200, 10_000):  # rounds of several passes, up to all t_max passes at once
        res = run_sci(replay_sampler(z), b, k, policy, cfg, block_rows=block_rows)
        for field in ("label", "probs", "sp", "delta_sp", "passes", "abstained", "reason"):
            np.testing.assert_array_equal(getattr(res, field), getattr(one_at_a_time, field), err_msg=field)
