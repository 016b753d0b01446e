"""Risk-controlled abstention: p-values, the threshold grid, ΔSP alert levels, and a simulation showing that
Learn-then-Test keeps its promise (risk among answered windows > α in at most δ of random validation draws)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from controller.risk import (
    alert_level,
    binomial_pvalue,
    exceedance_level,
    learn_then_test,
    min_answered,
    split_halves,
    threshold_grid,
)


def test_binomial_pvalue_is_the_lower_tail():
    assert binomial_pvalue(3, 200, 0.05) == pytest.approx(sum(binom.pmf(k, 200, 0.05) for k in range(4)))
    assert binomial_pvalue(0, 114, 0.02) <= 0.1 < binomial_pvalue(0, 113, 0.02)
    assert min_answered(0.02, 0.1) == 114


def _draw(rng, n):
    """Synthetic scores: confidence c ~ U(0, 1), wrong with probability 0.3·(1 − c)²; the risk among windows
    with c ≥ λ is then 0.1·(1 − λ)² (exactly)."""
    c = rng.uniform(0, 1, n)
    return c, rng.uniform(0, 1, n) < 0.3 * (1 - c) ** 2


def true_risk(lam: float) -> float:
    lam = max(lam, 0.0)
    return 0.1 * (1 - lam) ** 2


@pytest.mark.parametrize(("alpha", "delta", "min_certified"), [(0.05, 0.1, 0.9), (0.02, 0.2, 0.5)])
def test_learn_then_test_keeps_its_promise_over_random_splits(alpha, delta, min_certified):
    rng = np.random.default_rng(7)
    trials, violations, certified = 400, 0, 0
    for _ in range(trials):
        c, w = _draw(rng, 1600)
        fit, cal = split_halves(len(c), seed=int(rng.integers(1 << 31)))
        grid = threshold_grid(c[fit], w[fit], len(cal), alpha, delta)
        res = learn_then_test(c[cal], w[cal], grid, alpha, delta)
        if res.certified:
            certified += 1
            violations += true_risk(res.threshold) > alpha
    # the guarantee is P(violation) ≤ δ; 3 standard errors of Monte-Carlo slack
    assert violations / trials <= delta + 3 * np.sqrt(delta * (1 - delta) / trials)
    assert certified / trials > min_certified  # and the procedure is not vacuous: it usually answers something


def test_nothing_certified_when_every_window_is_a_coin_flip():
    rng = np.random.default_rng(0)
    c, w = rng.uniform(size=2000), rng.uniform(size=2000) < 0.5
    res = learn_then_test(c[1000:], w[1000:], threshold_grid(c[:1000], w[:1000], 1000, 0.02, 0.1), 0.02, 0.1)
    assert not res.certified and res.threshold == np.inf and res.answered == 0


def test_error_free_calibration_answers_everything():
    c, w = np.linspace(0, 1, 1000), np.zeros(1000, bool)
    res = learn_then_test(c, w, threshold_grid(c, w, 1000, 0.01, 0.1), 0.01, 0.1)
    assert res.certified and res.threshold == -np.inf and res.answered == 1000


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 0.85]), min_size=1, max_size=60),
       rate=st.floats(0.0, 1.0))
def test_exceedance_level_is_the_smallest_level_within_the_rate(values, rate):
    v = np.asarray(values)
    level = exceedance_level(v, rate)
    assert np.mean(v >= level) <= rate
    lower = v[v < level]
    if lower.size:  # any smaller observed level would alert on more than the rate
        assert np.mean(v >= lower.max()) > rate


@settings(max_examples=60, deadline=None)
@given(sp=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=80), rate=st.floats(0.0, 0.5),
       sp_star=st.sampled_from([0.6, 0.85, 0.95]))
def test_alert_level_never_fires_on_a_window_at_or_above_sp_star(sp, rate, sp_star):
    sp = np.asarray(sp)
    dsp = np.abs(sp_star - sp)
    level = alert_level(dsp, sp_star, rate)
    assert np.mean(dsp >= level) <= rate
    assert not (dsp[sp >= sp_star] >= level).any()
