"""Risk-controlled abstention: p-values, the threshold grid, ΔSP alert levels, and a simulation showing that
Learn-then-Test keeps its promise (risk among answered windows > α in at most δ of random validation draws)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression

from controller.calibration import RiskPart, fit_risk
from controller.decision import Decider, decide
from controller.engine import SciConfig, replay_sampler
from controller.passes import SplitPasses
from controller.policies import make_policy
from controller.risk import (
    LEARNED,
    alert_level,
    binomial_pvalue,
    confidence,
    exceedance_level,
    group_pvalues,
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


def test_the_promise_holds_in_each_group_of_patients_not_only_on_their_pool():
    """Three groups of held-out patients; on the third the model errs three times as often at every confidence
    (risk 0.3·(1 − λ)² against 0.1·(1 − λ)²). Pooled, the certified threshold keeps the average within α while the
    third group's risk exceeds it; tested per group (intersection-union), every group keeps α in all but δ of the
    random draws."""
    rng = np.random.default_rng(3)
    alpha, delta, trials = 0.05, 0.1, 300
    scale = np.array([1.0, 1.0, 3.0])
    group_risk = lambda lam: scale * true_risk(lam)  # noqa: E731
    pooled_bad = grouped_bad = grouped_certified = 0
    for _ in range(trials):
        g = np.repeat(np.arange(3), 2400)
        c = rng.uniform(0, 1, len(g))
        w = rng.uniform(0, 1, len(g)) < 0.3 * scale[g] * (1 - c) ** 2
        fit, cal = split_halves(len(c), seed=int(rng.integers(1 << 31)))
        pooled = learn_then_test(c[cal], w[cal], threshold_grid(c[fit], w[fit], len(cal), alpha, delta), alpha, delta)
        n_small = int(np.bincount(g[cal]).min())
        grid = threshold_grid(c[fit], w[fit], n_small, alpha, delta, groups_fit=g[fit])
        grouped = learn_then_test(c[cal], w[cal], grid, alpha, delta, g[cal])
        pooled_bad += pooled.certified and group_risk(pooled.threshold).max() > alpha
        if grouped.certified:
            grouped_certified += 1
            grouped_bad += group_risk(grouped.threshold).max() > alpha
    assert pooled_bad / trials > 0.9  # the pool's promise is broken for the third group nearly always
    assert grouped_bad / trials <= delta + 3 * np.sqrt(delta * (1 - delta) / trials)
    assert grouped_certified / trials > 0.9


def test_group_pvalues_is_the_largest_of_the_groups_binomial_pvalues():
    rng = np.random.default_rng(1)
    c, w, g = rng.uniform(size=300), rng.uniform(size=300) < 0.1, rng.integers(0, 3, 300)
    grid = np.array([0.2, 0.5, 0.9, 2.0])
    expect = [max(binomial_pvalue(int(w[(g == k) & (c >= lam)].sum()), int(((g == k) & (c >= lam)).sum()), 0.05)
                  for k in range(3)) for lam in grid]
    np.testing.assert_allclose(group_pvalues(c, w, grid, 0.05, g), expect)
    assert group_pvalues(c, w, grid, 0.05, g)[-1] == 1.0  # nothing answered: nothing certified


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


@pytest.mark.parametrize("score", sorted(LEARNED))
def test_a_learned_confidence_is_one_minus_scikit_learns_error_probability(score):
    rng = np.random.default_rng(3)
    logits = torch.as_tensor(rng.normal(0, 2, (500, 4)), dtype=torch.float32)
    probs, det = logits.softmax(1), (logits + torch.as_tensor(rng.normal(0, 0.5, (500, 4)))).float().softmax(1)
    novelty = torch.as_tensor(rng.uniform(0, 2, 500), dtype=torch.float32)
    x = LEARNED[score](probs, det, novelty).numpy()
    wrong = rng.uniform(size=500) < 1 / (1 + np.exp(-x @ rng.normal(0, 1, x.shape[1])))
    lr = LogisticRegression(max_iter=1000).fit(x, wrong)
    weights = (float(lr.intercept_[0]), *map(float, lr.coef_[0]))
    got = confidence(score, probs, 1 - probs.max(1).values, det, novelty, weights).numpy()
    np.testing.assert_allclose(got, 1 - lr.predict_proba(x)[:, 1], atol=1e-5)


def _split(rng, n, k=3, new_patients=False):
    """Synthetic validation passes: labels 0 and 1 are right unless the softmax is unsure (max prob below about
    0.7); every call of label 2 is wrong, however confident (the way the ECG model calls F). ``new_patients``:
    windows of patients unlike the validation ones, on whom half the calls of label 1 are wrong, however
    confident (the way the ECG model calls S on patients with irregular rhythms)."""
    called = rng.choice(k, n, p=[0.6, 0.3, 0.1])
    margin = rng.uniform(0, 8, n)
    logits = np.zeros((n, k), np.float32)
    logits[np.arange(n), called] = margin
    unsure = 1 / (1 + np.exp(4 * (margin - 1.5)))  # P(wrong) of labels 0 and 1 falls with the margin
    if new_patients:
        unsure = np.where(called == 1, np.maximum(unsure, 1 / 2), unsure)
    wrong = np.where(called == 2, True, rng.uniform(size=n) < unsure)
    y = np.where(wrong, (called + 1) % k, called)
    det = torch.as_tensor(logits)
    mc = det[:, None, :].repeat(1, 25, 1)  # every pass alike: the policy stops at its t_min
    return SplitPasses(det, mc, y.astype(np.int64), torch.zeros(n, 1), None)


def test_the_risk_rule_learns_not_to_answer_a_label_that_is_always_wrong():
    rng = np.random.default_rng(11)
    fit, cal = _split(rng, 3000), _split(rng, 3000)
    decider = Decider(make_policy("threshold", sp_star=0.85, t_min=2), SciConfig(t_max=25))
    rule, sel = fit_risk([RiskPart(fit, cal, decider)], alpha=0.02, delta=0.1)
    cover, scores = sel["coverage_at_alpha"], sel["auroc_misclassification"]
    assert rule.score == "max_prob_by_class" and cover["max_prob_by_class"] > cover["max_prob"] + 0.05
    assert scores["max_prob_by_class"] > scores["max_prob"]
    assert rule.certified and rule.validation["risk"] <= 0.02
    test = _split(rng, 3000)
    r = decide(test.evidence(), replay_sampler(test.mc), replace(decider, risk=rule))
    answered, wrong = ~r.abstained, r.label != test.y
    assert not answered[r.label == 2].any()  # no call of the always-wrong label is answered, however sure
    assert answered[r.label != 2].mean() > 0.6  # while most of the others are (margin above about 2.5)
    assert wrong[answered].mean() <= 0.02
    # one threshold on max_prob cannot do both: answering as much, it answers confident calls of label 2
    conf = test.deterministic.softmax(1).max(1).values.numpy()
    level = np.quantile(conf, 1 - answered.mean())
    assert wrong[conf >= level].mean() > 0.02


def test_cross_fitted_evidence_keeps_the_promise_on_patients_unlike_the_validation_ones():
    """One model's validation windows show no trouble with label 1; a cross-fitted model's held-out windows (other
    patients) do. Fitted on the validation windows alone, the rule answers label 1 and breaks its promise on a test
    set that mixes both kinds of patients; pooled with the cross-fitted evidence, it keeps it."""
    rng = np.random.default_rng(5)
    decider = Decider(make_policy("threshold", sp_star=0.85, t_min=2), SciConfig(t_max=25))
    validation = RiskPart(_split(rng, 3000), _split(rng, 3000), decider)
    held_out = RiskPart(_split(rng, 3000, new_patients=True), _split(rng, 3000, new_patients=True), decider)
    a, b = _split(rng, 3000), _split(rng, 3000, new_patients=True)
    test = SplitPasses(torch.cat([a.deterministic, b.deterministic]), torch.cat([a.mc, b.mc]), np.r_[a.y, b.y],
                       torch.zeros(6000, 1), None)

    def test_risk(rule):
        r = decide(test.evidence(), replay_sampler(test.mc), replace(decider, risk=rule))
        answered = ~r.abstained
        return (r.label != test.y)[answered].mean(), answered[r.label == 1].mean()

    alone, _ = fit_risk([validation], alpha=0.02, delta=0.1)
    pooled, _ = fit_risk([validation, held_out], alpha=0.02, delta=0.1)
    assert alone.validation["models"] == 1 and pooled.validation["models"] == 2
    assert pooled.validation["windows"] > alone.validation["windows"]
    risk_alone, label1_alone = test_risk(alone)
    risk_pooled, label1_pooled = test_risk(pooled)
    assert risk_alone > 0.02 and label1_alone > 0.5
    assert risk_pooled <= 0.02 and label1_pooled < 0.1
