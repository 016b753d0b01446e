"""Input checks on crafted signals: flat line, clipping, amplitude and spectrum far outside the training range."""

import numpy as np
import torch

from controller.quality import QualityFlag, check, fit_ranges, signal_stats

FS, L = 360.0, 256


def _training(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Beat-like windows: a narrow spike, a slow wave, mild noise, amplitudes varying ×2 between windows."""
    rng = np.random.default_rng(seed)
    t = np.arange(L) / FS
    amp = rng.uniform(0.7, 1.4, (n, 1))
    spike = np.exp(-(((t - 0.27) / 0.012) ** 2))
    wave = 0.3 * np.exp(-(((t - 0.5) / 0.05) ** 2))
    return (amp * (spike + wave) + 0.01 * rng.standard_normal((n, L))).astype(np.float32)


def _flags(x: np.ndarray, ranges) -> list[QualityFlag]:
    return [QualityFlag(int(f)) for f in check(signal_stats(torch.tensor(x, dtype=torch.float32)), ranges)]


def test_training_like_windows_pass_and_crafted_faults_are_named():
    train = _training()
    ranges = fit_ranges(signal_stats(torch.tensor(train)))
    assert ranges.train_flag_rate <= 0.005
    clean = _training(200, seed=1)
    assert all(f == 0 for f in _flags(clean, ranges))
    x = clean[:1]
    rng = np.random.default_rng(3)
    cases = {
        "flat": np.full((1, L), 0.2, np.float32) + 1e-6 * rng.standard_normal((1, L)).astype(np.float32),
        "clipped": np.clip(x, None, 0.3 * x.max()).astype(np.float32),  # the R spike saturates for ~10 samples
        "amplitude": x * 20,
        "spectrum": x + 0.5 * rng.standard_normal((1, L)).astype(np.float32),
    }
    for name, sig in cases.items():
        f = _flags(sig, ranges)[0]
        assert QualityFlag[name.upper()] in f, (name, f.names())
    assert _flags(cases["flat"], ranges)[0] == QualityFlag.FLAT  # a flat line is only that


def test_stats_of_a_pure_tone():
    t = np.arange(L) / FS
    hi = torch.tensor(np.sin(2 * np.pi * 150.0 * t)[None], dtype=torch.float32)  # above fs/4 = 90 Hz
    lo = torch.tensor(np.sin(2 * np.pi * 20.0 * t)[None], dtype=torch.float32)
    assert signal_stats(hi).hf_ratio.item() > 0.95 and signal_stats(lo).hf_ratio.item() < 0.05
    assert abs(signal_stats(lo).log_rms.item() - np.log(np.sqrt(0.5))) < 0.05
