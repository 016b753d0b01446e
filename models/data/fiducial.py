"""The R fiducial point of the ECG contract: where a beat window is centred, offline and live alike.

A beat's window is centred on the **R fiducial** found from a rough position (a reference annotation offline, the
streaming detector's band-pass extremum live): the peak of the QRS slope-energy envelope
``e(t) = sum over |u - t| <= SMOOTH of (x[u+1] - x[u-1])**2`` (raw signal ``x``; :data:`SMOOTH_S` ≈ 19 ms) within
±50 ms, the search repeated from where it lands until it stays (at most :data:`ITERATIONS` times; each move strictly
increases ``e``, so it converges to a point that is the envelope's maximum within ±50 ms of itself). Free of gain
and baseline (slopes), and one hump per QRS, so it does not flip between an R and an S wave of similar size the
way the largest deviation from a baseline does. On the annotated beats of the records below it sits a median of
1 sample after the annotation (quartiles −1 and +2); on wide ventricular beats it can sit on the steep downstroke,
some 50–70 ms from where the annotator marked the peak (records 119 and 208), the same for every such beat.

Why one shared function: annotation conventions differ by record (from 1 sample before to 10 after the extremum),
so windows centred on the annotation and windows centred on the detector's peak differ by a sample or two on most
beats, which tips beats at a class boundary. Refining both to the same fiducial makes the live window the offline
window: over the first 10 minutes of DS2 records 200, 232, 117, 233, 118, 105, 222, 213 and DS1 203, 207 the two
land on the same sample for 99.8 % of matched beats (the raw annotations: 38.9 %; the largest deviation from a
baseline re-estimated at each step: 97.9 %, record 117 at 68 %).

Only samples within :data:`REACH_S` of the rough position are read, so a streaming caller can refine once that much
signal has arrived on both sides.
"""

from __future__ import annotations

import numpy as np

REFINE_S = 0.050  # search half-width, s
SMOOTH_S = 0.019  # envelope half-width, s (7 samples at 360 Hz)
ITERATIONS = 4
REACH_S = ITERATIONS * REFINE_S + SMOOTH_S + 2 / 360  # a bound at any fs >= 360 Hz (one more sample for the slope)


def r_fiducial(signal: np.ndarray, positions: np.ndarray, fs: float, offset: int = 0) -> np.ndarray:
    """int64[n] R fiducial sample indices of the beats near ``positions`` int64[n] (absolute indices) in the raw
    ``signal`` float[m] at ``fs`` Hz, whose first sample has absolute index ``offset`` (a streaming buffer).

    Each beat is refined on its own (a pure function of the signal around it); reads outside the signal are
    clipped to its ends.

    >>> t = np.arange(360.0); x = np.exp(-0.5 * ((t - 100) / 3) ** 2)   # an R wave at sample 100
    >>> r_fiducial(x, np.array([90, 110]), 360.0).tolist()   # from either side: its slope-energy peak
    [100, 100]
    """
    sig = np.asarray(signal, dtype=np.float64).ravel()
    pos = np.asarray(positions, dtype=np.int64).ravel()
    if pos.size == 0 or sig.size == 0:
        return pos.copy()
    h = np.arange(-round(REFINE_S * fs), round(REFINE_S * fs) + 1)
    k = np.arange(-round(SMOOTH_S * fs), round(SMOOTH_S * fs) + 1)
    hk = h[:, None] + k[None, :]  # [H, S] offsets of the envelope terms of every candidate
    r = pos - offset
    for _ in range(ITERATIONS):
        t = r[:, None, None] + hk[None]
        slope = sig[np.clip(t + 1, 0, sig.size - 1)] - sig[np.clip(t - 1, 0, sig.size - 1)]
        r = np.clip(r + h[(slope * slope).sum(axis=2).argmax(axis=1)], 0, sig.size - 1)
    return r + offset
