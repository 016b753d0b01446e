"""The paper's synthetic bearing signals (toy benchmark, no files needed)."""

from __future__ import annotations

import numpy as np

LENGTH = 200
SHAFT_HZ = 30.0
FAULT_HZ = 120.0
NOISE_STD = 0.4


def paper_bearings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` signals ``x`` float32[n, 200] on t = linspace(0, 1, 200) (so ~199 samples/s) and labels int64[n].

    x = 0.5 sin(2π·30 t) + fault · 0.8 sin(2π·120 t) · exp(−5 t) + N(0, 0.4²), fault = y = (U(0, 1) > 0.5).
    The grid samples at 199 Hz, under the Nyquist rate of the 120 Hz fault tone, so in a spectrum of ``x`` the
    tone shows aliased at 199 − 120 = 79 Hz (kept as in the paper).

    Draws follow the paper's reference generator exactly: ``numpy.random.RandomState(seed)`` (the legacy global
    stream its scripts seed with ``np.random.seed``), per signal one uniform for the label, then its 200 noise
    samples. The legacy normal sampler rejects a variable number of draws, so this stream cannot be drawn as one
    array; the loop costs ~12 µs per signal and runs only when a split is built.
    """
    rng = np.random.RandomState(seed)
    t = np.linspace(0.0, 1.0, LENGTH)
    base = 0.5 * np.sin(2 * np.pi * SHAFT_HZ * t)
    fault = 0.8 * np.sin(2 * np.pi * FAULT_HZ * t) * np.exp(-5.0 * t)
    y = np.empty(n, dtype=np.int64)
    noise = np.empty((n, LENGTH))
    for i in range(n):
        y[i] = rng.rand() > 0.5
        noise[i] = rng.normal(0.0, NOISE_STD, size=LENGTH)
    x = base[None, :] + y[:, None] * fault[None, :] + noise
    return x.astype(np.float32), y
