"""RR-interval features of ECG beats, normalised per stream: one pure function shared by offline data and live replay.

The ECG contract's per-beat side features (``features["beat"]``, :data:`models.data.mitdb.BEAT_FEATURES`) start
with these 9 (:data:`RR_FEATURES`):

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
 8    irregularity   median of |log(pre_rr[j] / pre_rr[j-1])| over the last :data:`IRREGULAR_BEATS` beats j ≤ i (0
                     for beat 0): how irregular the stream's rhythm is around beat i
====  =============  ==========================================================================================

Per-stream normalisation is what carries inter-patient generalisation of the supraventricular class (de Chazal
et al. 2004; Llamedo & Martínez 2011; Mondéjar-Guerra et al. 2019): a premature beat is short *for this patient*.
The average is causal (beat i sees only beats 0..i of its own stream), so the offline training data and the live
stream compute the same numbers. **Warm-up rule**: while fewer than :data:`AVG_BEATS` intervals exist the average is
the mean of all intervals seen so far (beat 0: its own pre-RR, which is its post-RR), so the normalised ratios are
noisy for the first few beats of a stream and settle within about a minute. Clipping keeps one missed beat or a
pause from dragging the average (a missed beat doubles one interval).

Why the irregularity: a supraventricular beat is premature against a regular underlying rhythm; in atrial
fibrillation every interval differs from the last, so a short one says little, and the model needs to know which
of the two it is looking at. The median over 20 beats ignores the jumps of a few ectopic beats and rises with a
rhythm that is irregular throughout. Chosen on DS1 only: a class-balanced logistic regression on the side features
(the side expert's model), trained on the other DS1 records and tested on each of the three record groups, went
from macro-F1 (N/S/V) 0.637 to 0.670 with it (S sensitivity 0.73 → 0.76, PPV 0.29 → 0.36; 0.664 over 10 beats);
the whole recipe's record-grouped CV from 0.715 / 0.708 (seeds 42 / 100) to 0.722 / 0.716, and leaving one record
out from 0.719 to 0.725 (``docs/ecg-model-selection.md``).

Streaming: call :func:`rr_features` on the peaks detected so far; rows ``0 .. k-2`` of ``rr_features(p[:k])`` equal
the offline rows, the newest row is provisional (its post-RR is unknown), so emit beat i once beat i+1 is detected.
"""

from __future__ import annotations

import numpy as np

RR_FEATURES = ("pre_rr_s", "post_rr_s", "local_rr_s", "pre_local", "avg_rr_s", "pre_avg", "post_avg", "local_avg",
               "irregularity")
LOCAL_BEATS = 10
IRREGULAR_BEATS = 20
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


def running_median(x: np.ndarray, k: int) -> np.ndarray:
    """Median of ``x[max(0, i-k+1) .. i]`` for every i (float64[n]).

    >>> running_median(np.array([1.0, 5.0, 2.0, 4.0, 3.0]), 3).tolist()
    [1.0, 3.0, 2.0, 4.0, 3.0]
    """
    x = np.asarray(x, dtype=np.float64)
    if not x.size:
        return x.copy()
    padded = np.concatenate((np.full(k - 1, np.nan), x))
    return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, k), axis=1)


def rr_features(peaks: np.ndarray, fs: float) -> np.ndarray:
    """float32[n, 9] RR features (:data:`RR_FEATURES`) of strictly increasing R-peak samples int64[n] at ``fs`` Hz.

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
    irregular = running_median(np.abs(np.diff(np.log(pre), prepend=np.log(pre[0]))), IRREGULAR_BEATS)
    out[:] = np.stack([pre, post, local, pre / local, avg, pre / avg, post / avg, local / avg, irregular], axis=1)
    return out
