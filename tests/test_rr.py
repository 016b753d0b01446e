"""Per-stream RR features (models/data/rr.py): hand-computed values, causality, warm-up, clipping, irregularity."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import rr


def _reference(peaks: np.ndarray, fs: float) -> np.ndarray:
    """Plain per-beat loops of the documented definitions."""
    d = np.diff(peaks) / fs
    pre = np.concatenate(([d[0]], d))
    post = np.concatenate((d, [d[-1]]))
    rows = []
    for i in range(peaks.size):
        local = np.mean(pre[max(0, i - rr.LOCAL_BEATS + 1) : i + 1])
        avg = np.mean(np.clip(pre[max(0, i - rr.AVG_BEATS + 1) : i + 1], rr.RR_MIN_S, rr.RR_MAX_S))
        steps = [0.0] + [abs(np.log(pre[j] / pre[j - 1])) for j in range(1, i + 1)]  # beat 0's step: 0
        irregular = np.median(steps[max(0, i - rr.IRREGULAR_BEATS + 1) :])
        rows.append([pre[i], post[i], local, pre[i] / local, avg, pre[i] / avg, post[i] / avg, local / avg,
                     irregular])
    return np.asarray(rows)


def test_hand_computed():
    peaks = np.array([100, 460, 820, 1000, 1540])  # RR = 1.0, 1.0, 0.5, 1.5 s at 360 Hz
    f = rr.rr_features(peaks, 360.0)
    assert f.dtype == np.float32 and f.shape == (5, len(rr.RR_FEATURES)) == (5, 9)
    np.testing.assert_allclose(f[:, 0], [1.0, 1.0, 1.0, 0.5, 1.5], rtol=1e-6)  # pre (first := post)
    np.testing.assert_allclose(f[:, 1], [1.0, 1.0, 0.5, 1.5, 1.5], rtol=1e-6)  # post (last := pre)
    np.testing.assert_allclose(f[:, 2], [1.0, 1.0, 1.0, 0.875, 1.0], rtol=1e-6)  # local: running mean
    np.testing.assert_allclose(f[:, 3], [1.0, 1.0, 1.0, 0.5 / 0.875, 1.5], rtol=1e-6)
    # warm-up: fewer than AVG_BEATS intervals -> the mean of all so far (same as local here)
    np.testing.assert_allclose(f[:, 4], [1.0, 1.0, 1.0, 0.875, 1.0], rtol=1e-6)
    np.testing.assert_allclose(f[3, 5:8], [0.5 / 0.875, 1.5 / 0.875, 1.0], rtol=1e-6)
    # irregularity: |log| steps 0, 0, 0, ln 2, ln 3 -> running medians all 0 (one or two jumps do not move it)
    np.testing.assert_allclose(f[:, 8], 0.0, atol=1e-7)
    # alternating 1.0 / 0.5 s: steps 0, 0, ln 2, ln 2, ln 2 -> medians 0, 0, 0, ln 2 / 2, ln 2
    g = rr.rr_features(np.array([0, 360, 540, 900, 1080]), 360.0)
    np.testing.assert_allclose(g[:, 0], [1.0, 1.0, 0.5, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(g[:, 8], [0, 0, 0, np.log(2) / 2, np.log(2)], rtol=1e-6, atol=1e-7)


def test_long_stream_matches_loops_and_windows():
    rng = np.random.default_rng(1)
    gaps = rng.integers(60, 900, size=700)  # 0.17 .. 2.5 s: some intervals get clipped
    peaks = np.concatenate(([0], np.cumsum(gaps)))
    f = rr.rr_features(peaks, 360.0)
    np.testing.assert_allclose(f, _reference(peaks, 360.0), rtol=1e-5)
    # the running average forgets intervals older than AVG_BEATS beats
    assert not np.isclose(f[650, 4], np.mean(np.clip(f[: 651, 0], rr.RR_MIN_S, rr.RR_MAX_S)))


def test_online_prefix_equals_offline():
    rng = np.random.default_rng(0)
    peaks = np.cumsum(rng.integers(150, 500, size=60))
    full = rr.rr_features(peaks, 360.0)
    for k in range(2, peaks.size + 1):
        online = rr.rr_features(peaks[:k], 360.0)
        np.testing.assert_allclose(online[: k - 1], full[: k - 1], rtol=1e-6)  # all but the newest are final
        assert online[k - 1, 1] == online[k - 1, 0]  # newest: provisional post_rr := pre_rr


def test_normalised_ratios_do_not_depend_on_the_patients_rate():
    """The same rhythm pattern at 60 or 90 bpm: seconds differ, the per-stream ratios agree once warmed up."""
    pattern = np.tile([1.0, 1.0, 1.0, 0.6, 1.4], 80)  # a premature beat every 5 beats
    slow = np.concatenate(([0], np.cumsum(np.round(pattern * 360)))).astype(np.int64)
    fast = np.concatenate(([0], np.cumsum(np.round(pattern * 240)))).astype(np.int64)
    fs, ff = rr.rr_features(slow, 360.0), rr.rr_features(fast, 360.0)
    assert not np.allclose(fs[:, 0], ff[:, 0])
    np.testing.assert_allclose(fs[:, 5:], ff[:, 5:], rtol=1e-6)
    assert fs[-2, 5] < 0.65  # the premature beat is short for this stream


def test_degenerate_inputs():
    assert rr.rr_features(np.array([], dtype=np.int64), 360.0).shape == (0, 9)
    assert np.isnan(rr.rr_features(np.array([5]), 360.0)).all()
    with pytest.raises(ValueError, match="strictly increasing"):
        rr.rr_features(np.array([10, 10, 20]), 360.0)
