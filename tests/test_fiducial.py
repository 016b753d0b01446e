"""The R fiducial of the ECG contract (models/data/fiducial.py): crafted signals, streaming buffers, and the point of
it on real records: offline windows (from annotations) and live windows (from the detector) land on the same
sample."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import mitdb
from models.data.fiducial import REACH_S, SMOOTH_S, r_fiducial
from streams.rpeaks import detect_rpeaks

FS = 360.0


def _beat(n: int = 1080, r: int = 500, s_depth: float = 0.3, baseline: float = 0.0) -> np.ndarray:
    """A crafted beat (mV): a positive R wave at ``r`` and an S wave of ``s_depth`` mV 9 samples later, on a constant
    baseline."""
    t = np.arange(n)
    x = np.exp(-0.5 * ((t - r) / 3.0) ** 2) - s_depth * np.exp(-0.5 * ((t - r - 9) / 3.0) ** 2)
    return (x + baseline).astype(np.float32)


def _envelope_peak(x: np.ndarray) -> int:
    """Brute force: argmax over all samples of the slope-energy envelope (for a signal with one QRS)."""
    slope = np.zeros_like(x, dtype=np.float64)
    slope[1:-1] = x[2:].astype(np.float64) - x[:-2]
    k = round(SMOOTH_S * FS)
    return int(np.convolve(slope**2, np.ones(2 * k + 1), mode="same").argmax())


def test_finds_the_slope_energy_peak_from_a_rough_start() -> None:
    for s_depth in (0.3, 1.0, 1.6):  # R larger than S, equal, smaller (QS-like)
        x = _beat(s_depth=s_depth)
        peak = _envelope_peak(x)
        assert 495 <= peak <= 510
        for start in (485, 492, 500, 506, 515):  # up to 15 samples (42 ms) off
            assert r_fiducial(x, np.array([start]), FS).tolist() == [peak]


def test_baseline_offset_and_gain_do_not_move_it() -> None:
    x = _beat(s_depth=0.5)  # (an exact tie between two envelope humps may go either way under rounding)
    pos = np.array([490, 510])
    ref = r_fiducial(x, pos, FS)
    np.testing.assert_array_equal(r_fiducial(3.0 * x + 7.5, pos, FS), ref)


def test_a_streaming_buffer_with_an_offset_gives_the_absolute_index() -> None:
    x = _beat(n=3000, r=2000)
    keep = round(REACH_S * FS) + 2  # the history a buffer must hold
    buf_start = 1995 - keep
    whole = r_fiducial(x, np.array([1995]), FS)
    assert r_fiducial(x[buf_start:], np.array([1995]), FS, offset=buf_start).tolist() == whole.tolist()


def test_reads_only_its_documented_reach() -> None:
    rng = np.random.default_rng(0)
    x = _beat(n=3000, r=1500) + 0.01 * rng.standard_normal(3000).astype(np.float32)
    start = 1497
    lo, hi = start - round(REACH_S * FS), start + round(REACH_S * FS)
    y = x.copy()
    y[:lo] = 50.0 * rng.standard_normal(lo)  # huge slopes outside the reach change nothing
    y[hi + 1 :] = -50.0 * rng.standard_normal(y.size - hi - 1)
    assert r_fiducial(y, np.array([start]), FS).tolist() == r_fiducial(x, np.array([start]), FS).tolist()


def test_empty_input() -> None:
    assert r_fiducial(np.zeros(0), np.zeros(0, np.int64), FS).size == 0
    assert r_fiducial(_beat(), np.zeros(0, np.int64), FS).size == 0


@pytest.mark.parametrize("name", ["200", "232", "117"])  # 117: annotations up to 10 samples after the R peak
def test_offline_and_live_windows_are_centred_on_the_same_sample(name: str) -> None:
    try:
        rec = mitdb.load_record(name)
    except FileNotFoundError as e:  # DataNotFoundError
        pytest.skip(f"MIT-BIH data not available: {e}")
    n = 360 * 600  # the first 10 minutes
    sig, ann = rec.signal[:n], rec.beat_samples[rec.beat_samples < n - 100]
    live = detect_rpeaks(sig, FS)
    offline = r_fiducial(sig, ann, FS)
    j = np.clip(np.searchsorted(live, ann), 1, live.size - 1)
    nearest = np.where(np.abs(live[j - 1] - ann) <= np.abs(live[j] - ann), live[j - 1], live[j])
    matched = np.abs(nearest - ann) <= round(0.15 * FS)
    assert matched.mean() > 0.99
    same = (offline[matched] == nearest[matched]).mean()
    raw_same = (ann[matched] == nearest[matched]).mean()
    assert same >= 0.98, f"record {name}: {same:.4f} of beats on the same sample"
    assert same > raw_same  # the annotation itself sits elsewhere on many beats
