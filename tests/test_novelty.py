"""Novelty density models against scikit-learn, and the conformal threshold's promise."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from controller.novelty import conformal_threshold, fit_gaussian, fit_knn, fit_spectrum, from_state
from controller.quality import band_edges, bands_below, lines_kept, signal_stats
from models.checkpoint import load_density, save_density


def _clusters(n: int = 600, d: int = 6, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    mix = rng.normal(size=(d, d))
    h = rng.normal(size=(n, d)) @ mix + 4.0 * rng.normal(size=(k, d))[y]
    return h, y


def test_gaussian_score_is_min_class_mahalanobis_of_sklearn_pooled_covariance():
    h, y = _clusters()
    model = fit_gaussian(torch.tensor(h), torch.tensor(y), 3)
    means = np.stack([h[y == c].mean(0) for c in range(3)])
    pooled = EmpiricalCovariance(assume_centered=True).fit(h - means[y])
    q = np.random.default_rng(1).normal(size=(50, h.shape[1])) * 3
    expected = np.min([pooled.mahalanobis(q - means[c]) for c in range(3)], axis=0)
    got = model.score(torch.tensor(q, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_gaussian_ranks_far_points_above_training_points_and_survives_a_dead_unit():
    h, y = _clusters()
    h[:, 2] = 0.0  # a dead ReLU unit: singular covariance without the ridge
    model = fit_gaussian(torch.tensor(h), torch.tensor(y), 3)
    near = model.score(torch.tensor(h[:100], dtype=torch.float32))
    far = model.score(torch.tensor(h[:100] + 50.0, dtype=torch.float32))
    assert torch.isfinite(near).all() and (far.min() > near.max())


def test_knn_score_is_kth_neighbour_distance_of_normalised_features():
    h, _ = _clusters()
    model = fit_knn(torch.tensor(h), k=5, bank=10_000)
    bank = h / np.linalg.norm(h, axis=1, keepdims=True)
    q = np.random.default_rng(2).normal(size=(40, h.shape[1]))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    expected = NearestNeighbors(n_neighbors=5).fit(bank).kneighbors(qn)[0][:, -1]
    np.testing.assert_allclose(model.score(torch.tensor(q, dtype=torch.float32)).numpy(), expected, atol=1e-5)


def test_state_round_trip_gives_the_same_scores():
    h, y = _clusters()
    q = torch.tensor(h[:30] + 1.0, dtype=torch.float32)
    for m in (fit_gaussian(torch.tensor(h), torch.tensor(y), 3), fit_knn(torch.tensor(h), k=3)):
        assert torch.equal(from_state(m.state()).score(q), m.score(q))
    power = torch.rand(200, 128) ** 4  # power spectra of 256-sample windows
    spectrum = fit_spectrum(power, 10, lines_kept(256, 360.0, (50.0, 60.0)))
    assert torch.equal(from_state(spectrum.state()).score(power[:20]), spectrum.score(power[:20]))
    old = {**spectrum.state(), "window": None}  # fitted by an older version on the unwindowed spectrum
    old.pop("window")
    with pytest.raises(ValueError, match="recalibrate"):
        from_state(old)


def _lowpass(x: torch.Tensor, top_bin: int) -> torch.Tensor:
    """x with every FFT bin above ``top_bin`` removed (an ideal anti-alias filter)."""
    f = torch.fft.rfft(x, dim=1)
    f[:, top_bin + 1 :] = 0
    return torch.fft.irfft(f, n=x.shape[1], dim=1)


def _highpass(x: torch.Tensor, top_bin: int) -> torch.Tensor:
    return x - _lowpass(x, top_bin)


def test_the_spectrum_detector_ignores_missing_power_above_its_band_but_not_excess():
    """A window that lost everything above the band limit (a source sampled at a lower rate, resampled) scores as
    a typical window; one whose power moved inside the band, or that gained power above it (noise), does not."""
    g = torch.Generator().manual_seed(0)
    n, length, fs = 400, 256, 360.0
    t = torch.arange(length) / fs
    # in-distribution: a 1-3 Hz wave, a 10-20 Hz component and broadband noise at random levels
    x = (torch.sin(2 * torch.pi * (1 + 2 * torch.rand(n, 1, generator=g)) * t)
         + 0.3 * torch.rand(n, 1, generator=g) * torch.sin(2 * torch.pi * (10 + 10 * torch.rand(n, 1, generator=g)) * t)
         + 0.05 * torch.randn(n, length, generator=g))
    m = bands_below(length, fs, 40.0)
    top_bin = band_edges(length // 2)[m]  # the band limit's highest FFT bin
    assert top_bin * fs / length <= 40.0
    detector = fit_spectrum(signal_stats(x).spectrum, m)
    full = fit_spectrum(signal_stats(x).spectrum, len(band_edges(length // 2)) - 1)
    q = x[:50]
    cut = _lowpass(q, top_bin)
    usual = detector.score(signal_stats(q).spectrum).median()
    scores = detector.score(signal_stats(cut).spectrum)  # within the training range, typical at the median
    assert scores.max() <= detector.score(signal_stats(x).spectrum).max() and scores.median() <= 1.1 * usual
    assert full.score(signal_stats(cut).spectrum).median() > 10 * full.score(signal_stats(q).spectrum).median()
    hum = q + 0.5 * torch.sin(2 * torch.pi * 30.0 * t)  # a strong 30 Hz line: inside the band
    assert detector.score(signal_stats(hum).spectrum).median() > 10 * usual
    hiss = q + 0.3 * _highpass(torch.randn(50, length, generator=g), top_bin)  # noise above the band only
    assert detector.score(signal_stats(hiss).spectrum).median() > 10 * usual


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 400), rate=st.floats(0.005, 0.5))
def test_conformal_threshold_flags_at_most_rate_of_the_calibration_scores(n, rate):
    s = torch.tensor(np.random.default_rng(n).normal(size=n))
    thr = conformal_threshold(s, rate)
    # rank ⌈(n+1)(1−rate)⌉ of n leaves at most n − rank ≤ (n+1)·rate − 1 scores above it
    assert (s > thr).float().mean().item() <= rate + 1e-12


def test_conformal_threshold_keeps_its_promise_on_new_windows():
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(300):
        cal, new = rng.normal(size=200), rng.normal(size=2000)
        flagged.append(np.mean(new > conformal_threshold(torch.tensor(cal), 0.05)))
    assert np.mean(flagged) <= 0.05 + 0.003  # the marginal guarantee (Monte-Carlo slack)
    assert np.mean(flagged) == pytest.approx(0.05, abs=0.01)


def test_stored_density_is_compressed_exact_and_plain_files_still_load(tmp_path):
    bank = torch.relu(torch.randn(500, 32))  # ReLU features: about half zeros, as a trunk's
    state = {"trunk": fit_knn(bank, bank=400).state()}
    path = save_density("m", state, tmp_path)
    assert path.read_bytes()[:2] == b"\x1f\x8b" and path.stat().st_size < 400 * 32 * 4
    back = load_density("m", tmp_path)
    assert torch.equal(back["trunk"]["bank"], state["trunk"]["bank"]) and back["trunk"]["method"] == "knn"
    torch.save(state, path)  # a plain torch file, as earlier checkpoints stored it
    assert torch.equal(load_density("m", tmp_path)["trunk"]["bank"], state["trunk"]["bank"])
    assert load_density("absent", tmp_path) is None


def test_the_ecg_spectrum_detector_leaves_mains_lines_out_but_not_broadband_noise():
    """Mains hum (50 or 60 Hz and harmonics, which every ECG device notches) is not a different signal; noise that
    raises the bins between the lines still is. Without the lines left out, the same hum is flagged."""
    g = torch.Generator().manual_seed(1)
    n, length, fs = 400, 256, 360.0
    t = torch.arange(length) / fs
    x = (torch.sin(2 * torch.pi * (1 + 2 * torch.rand(n, 1, generator=g)) * t)
         + 0.3 * torch.sin(2 * torch.pi * (10 + 10 * torch.rand(n, 1, generator=g)) * t)
         + 0.05 * torch.randn(n, length, generator=g))
    m = bands_below(length, fs, 40.0)
    lines = fit_spectrum(signal_stats(x).spectrum, m, lines_kept(length, fs, (50.0, 60.0)))
    plain = fit_spectrum(signal_stats(x).spectrum, m)
    q = x[:50]
    for f0 in (50.0, 60.0):
        phase = 2 * torch.pi * torch.rand(50, 1, generator=g)
        hum = q + 0.2 * torch.sin(2 * torch.pi * f0 * t + phase) + 0.05 * torch.sin(4 * torch.pi * f0 * t + phase)
        assert lines.score(signal_stats(hum).spectrum).max() <= lines.score(signal_stats(x).spectrum).quantile(0.99)
        assert plain.score(signal_stats(hum).spectrum).median() > 10 * plain.score(signal_stats(q).spectrum).median()
    hiss = q + 0.1 * _highpass(torch.randn(50, length, generator=g), band_edges(length // 2)[m])
    assert lines.score(signal_stats(hiss).spectrum).median() > 10 * lines.score(signal_stats(q).spectrum).median()


def test_the_spectrum_detector_knows_each_class_so_a_rare_class_is_not_unfamiliar():
    """One Gaussian of all training spectra is the majority's: a rare class with a spectrum of its own (healthy
    bearings among fault frames) reads as unfamiliar. One Gaussian per class (shared covariance) does not."""
    g = torch.Generator().manual_seed(2)
    length, fs = 256, 360.0
    t = torch.arange(length) / fs
    common = torch.sin(2 * torch.pi * (5 + 10 * torch.rand(950, 1, generator=g)) * t) + 0.05 * torch.randn(
        950, length, generator=g)
    rare = 0.2 * torch.sin(2 * torch.pi * (5 + 10 * torch.rand(50, 1, generator=g)) * t) + 0.3 * _highpass(
        torch.randn(50, length, generator=g), 20)
    x, y = torch.cat([common, rare]), torch.cat([torch.zeros(950), torch.ones(50)]).long()
    m = len(band_edges(length // 2)) - 1
    pooled, per_class = fit_spectrum(signal_stats(x).spectrum, m), fit_spectrum(signal_stats(x).spectrum, m, y=y,
                                                                               n_classes=2)
    for model in (pooled, per_class):
        assert model.density.means.shape[0] == (1 if model is pooled else 2)
    spec = signal_stats(x).spectrum
    flagged = {name: float((model.score(spec[950:]) > model.score(spec[:950]).quantile(0.99)).float().mean())
               for name, model in (("pooled", pooled), ("per_class", per_class))}
    assert flagged["pooled"] > 0.5 and flagged["per_class"] < 0.1, flagged
    assert from_state(per_class.state()).density.means.shape == per_class.density.means.shape


def test_a_stratified_knn_bank_keeps_a_rare_class_familiar():
    """A random bank holds a rare class in proportion: too few of its windows to be anyone's k nearest neighbours.
    A class-stratified bank of the same size holds as many of them as of the common class."""
    g = torch.Generator().manual_seed(3)
    common = torch.randn(5000, 8, generator=g) + 4 * torch.eye(8)[0]
    rare = torch.randn(300, 8, generator=g) + 4 * torch.eye(8)[1]
    h, y = torch.cat([common, rare]), torch.cat([torch.zeros(5000), torch.ones(300)]).long()
    random, stratified = fit_knn(h, k=10, bank=500), fit_knn(h, k=10, bank=500, y=y)
    assert stratified.bank.shape[0] == 500 and random.bank.shape[0] == 500
    query = torch.randn(40, 8, generator=g) + 4 * torch.eye(8)[1]  # new windows of the rare class
    common_q = torch.randn(40, 8, generator=g) + 4 * torch.eye(8)[0]
    flagged = {name: float((m.score(query) > m.score(common_q).quantile(0.99)).float().mean())
               for name, m in (("random", random), ("stratified", stratified))}
    assert flagged["random"] > 0.5 and flagged["stratified"] < 0.1, flagged
