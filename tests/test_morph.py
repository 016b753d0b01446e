"""Template morphology features (models/data/morph.py): streaming = offline, gain and baseline free, warm-up."""

from __future__ import annotations

import numpy as np

from models.data.morph import QRS, TEMPLATE_BEATS, morph_features


def _beats(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(256)
    normal = np.exp(-0.5 * ((t - 96) / 4.0) ** 2) + 0.2 * np.exp(-0.5 * ((t - 200) / 15.0) ** 2)
    x = normal[None, :] * rng.uniform(0.8, 1.2, (n, 1)) + 0.02 * rng.standard_normal((n, 256))
    return x.astype(np.float32)


def test_streaming_with_history_equals_offline():
    x = _beats(300)
    full = morph_features(x)
    parts, start = [], 0
    for size in (1, 5, 63, 64, 100, 67):
        parts.append(morph_features(x[start : start + size], x[:start]))
        start += size
    np.testing.assert_allclose(np.concatenate(parts), full, atol=1e-5)
    # only the last TEMPLATE_BEATS - 1 windows of the history matter
    np.testing.assert_allclose(morph_features(x[200:], x[200 - TEMPLATE_BEATS + 1 : 200]), full[200:], atol=1e-5)


def test_gain_and_baseline_do_not_change_the_features():
    x = _beats(120)
    scaled = 3.0 * x + 5.0  # gain and a constant baseline offset for the whole stream
    np.testing.assert_allclose(morph_features(scaled), morph_features(x), atol=1e-4)


def test_an_ectopic_beat_stands_out_from_the_template():
    x = _beats(100)
    t = np.arange(256)
    wide = -1.5 * np.exp(-0.5 * ((t - 100) / 14.0) ** 2)  # a wide, inverted (ventricular-like) complex
    x[80] = wide
    f = morph_features(x)
    assert f[0].tolist() == [1.0, 1.0, 0.0]  # warm-up: the first beat is its own template
    assert np.all(f[60:80, 0] > 0.95) and f[80, 0] < 0.0
    expected_amp = np.sqrt((wide[QRS] ** 2).mean())
    assert f[80, 2] > np.log(expected_amp / 1.2) - 0.3  # larger QRS energy than the template's
