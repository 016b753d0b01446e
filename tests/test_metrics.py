"""controller.metrics against hand-computed values and scikit-learn; controller.plots writes readable PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_recall_fscore_support, precision_score, recall_score, roc_auc_score

from controller import metrics, plots

CLASSES = ("N", "S", "V", "F")


# --- AUROC -------------------------------------------------------------------------------------------------


def test_auroc_hand_computed():
    # error windows score 0.35 and 0.8; correct ones 0.1 and 0.4 -> 3 of 4 (error, correct) pairs ranked right
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)


def test_auroc_matches_sklearn_on_random_data():
    rng = np.random.default_rng(1)
    is_error = rng.random(500) < 0.2
    score = rng.normal(size=500) + is_error  # informative but noisy
    score[::7] = np.round(score[::7], 1)  # some ties
    assert metrics.auroc(score, is_error) == pytest.approx(roc_auc_score(is_error, score), abs=1e-12)


def test_auroc_is_nan_with_a_single_class():
    assert math.isnan(metrics.auroc([0.2, 0.9, 0.4], [False, False, False]))
    assert math.isnan(metrics.auroc([0.2, 0.9, 0.4], [True, True, True]))


# --- risk-coverage / AURC ----------------------------------------------------------------------------------


def test_risk_coverage_points_by_hand():
    # given shuffled: sorted by confidence 0.9 (ok), 0.8 (wrong), 0.7 (ok), 0.6 (wrong)
    conf = np.array([0.7, 0.9, 0.6, 0.8])
    correct = np.array([True, True, False, False])
    coverage, risk = metrics.risk_coverage(conf, correct)
    assert coverage.dtype == np.float64 and risk.dtype == np.float64
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 2 / 4])


def test_aurc_by_hand():
    conf = np.array([0.7, 0.9, 0.6, 0.8])
    correct = np.array([True, True, False, False])
    # mean of the selective risks 0, 1/2, 1/3, 1/2
    assert metrics.aurc(conf, correct) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)


def test_risk_coverage_spreads_errors_over_ties_and_ignores_input_order():
    conf = np.array([0.9, 0.9, 0.5, 0.5])
    correct = np.array([False, True, True, True])
    _, risk = metrics.risk_coverage(conf, correct)
    # the 0.9 tie holds 1 error in 2 windows: half an error each
    np.testing.assert_allclose(risk, [0.5 / 1, 1.0 / 2, 1.0 / 3, 1.0 / 4])
    for perm in ([1, 0, 3, 2], [3, 2, 1, 0], [2, 0, 3, 1]):
        _, risk_perm = metrics.risk_coverage(conf[perm], correct[perm])
        np.testing.assert_allclose(risk_perm, risk)


def test_aurc_of_perfect_ranking_and_constant_confidence():
    correct = np.array([True] * 6 + [False] * 4)
    perfect = np.linspace(1.0, 0.1, 10)  # all correct windows ranked first
    # risks: 0 x6, then 1/7, 2/8, 3/9, 4/10
    assert metrics.aurc(perfect, correct) == pytest.approx((1 / 7 + 2 / 8 + 3 / 9 + 4 / 10) / 10)
    # one big tie: risk is the overall error rate at every coverage
    assert metrics.aurc(np.full(10, 0.5), correct) == pytest.approx(0.4)


def test_risk_coverage_rejects_nan_confidence():
    with pytest.raises(ValueError, match="NaN"):
        metrics.risk_coverage([0.5, np.nan], [True, False])


# --- ECE -------------------------------------------------------------------------------------------------


def test_ece_four_points_by_hand():
    conf = [0.95, 0.9, 0.65, 0.3]
    correct = [True, False, True, True]
    # 5 bins: (0.8, 1] holds 0.95, 0.9 (acc 0.5, conf 0.925); (0.6, 0.8] holds 0.65; (0.2, 0.4] holds 0.3
    expected = 2 / 4 * abs(0.5 - 0.925) + 1 / 4 * abs(1 - 0.65) + 1 / 4 * abs(1 - 0.3)
    assert metrics.ece(conf, correct, n_bins=5) == pytest.approx(expected)
    assert expected == pytest.approx(0.475)


def test_ece_bins_are_right_closed():
    # 0.6 falls in (0.4, 0.6], 0.7 in (0.6, 0.8]; left-closed bins would pool them and give 0.15
    assert metrics.ece([0.6, 0.7], [True, False], n_bins=5) == pytest.approx(0.5 * 0.4 + 0.5 * 0.7)


def test_ece_is_zero_when_calibrated_and_rejects_out_of_range():
    assert metrics.ece(np.full(4, 0.75), [True, True, True, False]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.ece([1.2, 0.5], [True, False])


# --- classification summary ----------------------------------------------------------------------------


def test_classification_summary_by_hand_with_absent_class():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    s = metrics.classification_summary(y_true, y_pred, CLASSES)
    assert s["n"] == 5
    assert s["error"] == pytest.approx(0.4)
    # F1: N 0.5, S 0.8, V 0 (missed), F 0 (absent, zero_division=0)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0 + 0.0) / 4)
    pc = s["per_class"]
    assert (pc["N"]["sensitivity"], pc["N"]["ppv"], pc["N"]["support"]) == (0.5, 0.5, 2)
    assert pc["S"]["sensitivity"] == 1.0 and pc["S"]["ppv"] == pytest.approx(2 / 3)
    assert pc["V"]["sensitivity"] == 0.0 and math.isnan(pc["V"]["ppv"])  # V never predicted
    assert math.isnan(pc["F"]["sensitivity"]) and pc["F"]["support"] == 0
    # the same with class names as labels
    names = np.array(CLASSES)
    s_str = metrics.classification_summary(names[y_true], names[y_pred], CLASSES)
    assert s_str["macro_f1"] == s["macro_f1"] and s_str["error"] == s["error"]


def test_answered_by_label_is_sklearns_precision_on_the_answered_windows():
    rng = np.random.default_rng(5)
    y_true, y_pred = rng.choice(4, 600), rng.choice(3, 600)  # F (3) is never predicted
    held = rng.uniform(size=600) < 0.3
    held[y_pred == 2] = True  # and no V call is answered
    r = metrics.answered_by_label(y_true, y_pred, held, CLASSES)
    ppv = precision_recall_fscore_support(y_true[~held], y_pred[~held], labels=[0, 1], average=None)[0]
    assert [r["N"]["ppv_answered"], r["S"]["ppv_answered"]] == pytest.approx(ppv.tolist())
    assert r["V"]["calls"] == int((y_pred == 2).sum()) > 0 and r["V"]["answered"] == 0
    assert math.isnan(r["V"]["ppv_answered"]) and r["F"]["calls"] == 0
    assert sum(d["answered"] for d in r.values()) == int((~held).sum())


def test_classification_summary_matches_sklearn_on_random_data():
    rng = np.random.default_rng(7)
    y_true = rng.choice(4, size=800, p=[0.7, 0.1, 0.15, 0.05])
    y_pred = np.where(rng.random(800) < 0.8, y_true, rng.integers(0, 4, size=800))
    s = metrics.classification_summary(y_true, y_pred, CLASSES)
    labels = [0, 1, 2, 3]
    sens = recall_score(y_true, y_pred, labels=labels, average=None)
    ppv = precision_score(y_true, y_pred, labels=labels, average=None)
    for k, name in enumerate(CLASSES):
        assert s["per_class"][name]["sensitivity"] == pytest.approx(sens[k])
        assert s["per_class"][name]["ppv"] == pytest.approx(ppv[k])
        assert s["per_class"][name]["support"] == int((y_true == k).sum())
    macro = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert s["macro_f1"] == pytest.approx(macro)
    assert s["error"] == pytest.approx(np.mean(y_true != y_pred))


# --- selective / passes summaries ---------------------------------------------------------------------


def test_selective_summary_by_hand():
    s = metrics.selective_summary([True, False, True, True], [False, False, True, False])
    assert s["abstain_rate"] == 0.25 and s["coverage"] == 0.75
    assert s["accuracy"] == pytest.approx(2 / 3) and s["risk"] == pytest.approx(1 / 3)
    all_abstained = metrics.selective_summary([True, False], [True, True])
    assert all_abstained["abstain_rate"] == 1.0 and math.isnan(all_abstained["accuracy"])


def test_passes_summary_by_hand():
    s = metrics.passes_summary([2, 4, 10, 8], [True, True, False, False])
    assert s == {"mean_passes": 6.0, "passes_correct": 3.0, "passes_wrong": 9.0, "ratio_wrong_correct": 3.0}
    none_wrong = metrics.passes_summary([2, 4], [True, True])
    assert math.isnan(none_wrong["passes_wrong"]) and math.isnan(none_wrong["ratio_wrong_correct"])


# --- bootstrap ----------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_matches_normal_width_and_is_reproducible():
    x = np.random.default_rng(3).normal(loc=2.0, scale=1.0, size=400)
    lo, hi = metrics.bootstrap_ci(np.mean, x, n_boot=2000, seed=11)
    assert lo < x.mean() < hi
    normal_width = 2 * 1.959964 * x.std(ddof=1) / np.sqrt(x.size)
    assert hi - lo == pytest.approx(normal_width, rel=0.15)
    assert metrics.bootstrap_ci(np.mean, x, n_boot=2000, seed=11) == (lo, hi)
    assert metrics.bootstrap_ci(np.mean, x, n_boot=2000, seed=12) != (lo, hi)


def test_bootstrap_ci_resamples_rows_jointly_and_skips_nan_replicates():
    rng = np.random.default_rng(5)
    is_error = np.zeros(40, dtype=bool)
    is_error[:2] = True  # many resamples contain no error -> AUROC nan, must be skipped
    score = rng.random(40) + 0.8 * is_error
    point = metrics.auroc(score, is_error)
    lo, hi = metrics.bootstrap_ci(metrics.auroc, score, is_error, n_boot=300, seed=0)
    assert 0.0 <= lo <= point <= hi <= 1.0
    # paired rows: the CI of a perfectly separating score stays at exactly 1
    assert metrics.bootstrap_ci(metrics.auroc, is_error.astype(float), is_error, n_boot=200) == (1.0, 1.0)


def test_bootstrap_ci_all_nan_and_bad_input():
    lo, hi = metrics.bootstrap_ci(metrics.auroc, [0.1, 0.2], [False, False], n_boot=20)
    assert math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="equal length"):
        metrics.bootstrap_ci(metrics.auroc, [0.1, 0.2], [False])


# --- plots --------------------------------------------------------------------------------------------


def _assert_png(path, min_size=(300, 200)):
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        # not a blank canvas: the drawn lines/bars give many distinct colours
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)  # None = more colours than that
        assert colors is None or len(colors) > 10


def test_plots_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    correct = rng.random(n) < 0.85
    max_prob = np.clip(rng.beta(8, 2, n) + 0.1 * correct, 0, 1)
    delta_sp = np.abs(rng.normal(0.05, 0.03, n)) + 0.15 * ~correct
    passes = np.clip(rng.poisson(4, n) + 6 * ~correct, 2, 30)

    curves = {
        "max_prob": metrics.risk_coverage(max_prob, correct),
        "-ΔSP": metrics.risk_coverage(-delta_sp, correct),
    }
    written = [
        plots.plot_risk_coverage(curves, tmp_path / "rc.png"),
        plots.plot_passes_hist(passes, correct, tmp_path / "sub" / "passes.png", title="mitdb DS2 passes"),
        plots.plot_delta_sp(delta_sp, correct, tmp_path / "dsp.png", title="mitdb DS2 ΔSP"),
    ]
    assert [p.name for p in written] == ["rc.png", "passes.png", "dsp.png"]
    for p in written:
        _assert_png(p)


def test_plots_reject_non_png_and_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="png"):
        plots.plot_delta_sp([0.1, 0.2], [True, False], tmp_path / "x.svg", title="x")
    with pytest.raises(ValueError, match="same length"):
        plots.plot_passes_hist([1, 2, 3], [True, False], tmp_path / "x.png", title="x")


def test_vectorized_bootstrap_auroc_matches_generic_bootstrap():
    from controller.metrics import auroc, bootstrap_auroc_ci, bootstrap_ci

    rng = np.random.default_rng(3)
    err = rng.random(400) < 0.1
    score = np.round(rng.random(400) + 0.4 * err, 2)  # rounded: many ties
    fast = bootstrap_auroc_ci(score, err, n_boot=300, seed=11)
    slow = bootstrap_ci(auroc, score, err, n_boot=300, seed=11)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
