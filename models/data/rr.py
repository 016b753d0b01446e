"""RR-interval features of ECG beats, normalised per stream: one pure function shared by offline data and live replay.

The ECG contract's per-beat side features (``features["beat"]``, :data:`models.data.mitdb.BEAT_FEATURES`) start
with these 8 (:data:`RR_FEATURES`):

====  =============  ==========================================================================================
 idx  name           definition (seconds unless a ratio; ``p`` = R-peak sample indices of the stream, ``fs`` Hz)
====  =============  ==========================================================================================
 0    pre_rr_s       ``(p[i] - p[i-1]) / fs``; first beat: its post-RR
 1    post_rr_s      ``(p[i+1] - p[i]) / fs``; newest beat: its pre-RR (provisional until beat i+1 is seen)
 2    local_rr_s     mean of the last :data:`LOCAL_BEATS` pre-RR intervals, beat i's included
 3    pre_local      pre_rr / local_rr
 4    avg_rr_s       the stream's running average RR: mean of its last :data:`AVG_BEATS` pre-RR intervals (beat
                     i's included), each clipped to [:data:`RR_MIN_S`, :data:`RR_MAX_S`]
 5    pre_avg        pre_rr / avg_rr
 6    post_avg       post_rr / avg_rr
 7    local_avg      local_rr / avg_rr
====  =============  ==========================================================================================

Per-stream normalisation is what carries inter-patient generalisation of the supraventricular class (de Chazal
et al. 2004; Llamedo & Martínez 2011; Mondéjar-Guerra et al. 2019): a premature beat is short *for this patient*.
The average is causal (beat i sees only beats 0..i of its own stream), so the offline training data and the live
stream compute the same numbers. **Warm-up rule**: while fewer than :data:`AVG_BEATS` intervals exist the average is
the mean of all intervals seen so far (beat 0: its own pre-RR, which is its post-RR), so the normalised ratios are
noisy for the first few beats of a stream and settle within about a minute. Clipping keeps one missed beat or a
pause from dragging the average (a missed beat doubles one interval).

Streaming: call :func:`rr_features` on the peaks detected so far; rows ``0 .. k-2`` of ``rr_features(p[:k])`` equal
the offline rows, the newest row is provisional (its post-RR is unknown), so emit beat i once beat i+1 is detected.
"""

from __future__ import annotations

import numpy as np

RR_FEATURES = ("pre_rr_s", "post_rr_s", "local_rr_s", "pre_local", "avg_rr_s", "pre_avg", "post_avg", "local_avg")
LOCAL_BEATS = 10
AVG_BEATS = 300  # about 4-5 minutes of sinus rhythm
RR_MIN_S, RR_MAX_S = 0.2, 2.0


def _running_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``x[max(0, i-k+1) .. i]`` for every i (float64[n]).

    >>> _running_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist()
    [1.0, 1.5, 2.5, 3.5]
    """
    csum = np.concatenate(([0.0], np.cumsum(x)))
    i = np.arange(x.size)
    lo = np.maximum(0, i - (k - 1))
    return (csum[i + 1] - csum[lo]) / (i + 1 - lo)


def rr_features(peaks: np.ndarray, fs: float) -> np.ndarray:
    """float32[n, 8] RR features (:data:`RR_FEATURES`) of strictly increasing R-peak samples int64[n] at ``fs`` Hz.

    With fewer than 2 peaks no interval exists and the rows are NaN.

    >>> f = rr_features(np.array([0, 360, 720, 1008]), 360.0)
    >>> f[:, :2].astype(float).round(3).tolist()   # pre, post (s)
    [[1.0, 1.0], [1.0, 1.0], [1.0, 0.8], [0.8, 0.8]]
    >>> f[3, 4:6].astype(float).round(3).tolist()   # running average over 1, 1, 1, 0.8 s; pre / average
    [0.95, 0.842]
    """
    p = np.asarray(peaks, dtype=np.int64).ravel()
    n = p.size
    out = np.full((n, len(RR_FEATURES)), np.nan, dtype=np.float32)
    if n < 2:
        return out
    d = np.diff(p).astype(np.float64) / fs
    if np.any(d <= 0):
        raise ValueError("peaks must be strictly increasing sample indices")
    pre = np.concatenate(([d[0]], d))
    post = np.concatenate((d, [d[-1]]))
    local = _running_mean(pre, LOCAL_BEATS)
    avg = _running_mean(np.clip(pre, RR_MIN_S, RR_MAX_S), AVG_BEATS)
    out[:] = np.stack([pre, post, local, pre / local, avg, pre / avg, post / avg, local / avg], axis=1)
    return out
