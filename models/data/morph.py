"""Beat morphology relative to the stream's own running template: per-patient adaptation from unlabelled beats.

Features of beat i, float32[3] (:data:`MORPH_FEATURES`), from the 256-sample windows (R fiducial at index 96) of the
stream's beats in time order. Each window is baseline-corrected (minus its median); the template of beat i is the
mean of the corrected windows of beats ``max(0, i - TEMPLATE_BEATS + 1) .. i`` (causal, beat i included):

- ``corr_qrs``: Pearson correlation of beat and template over the QRS (``QRS`` = samples 71..130, R at 96);
- ``corr_beat``: the same over the whole window;
- ``log_amp``: log(RMS of the beat's QRS / RMS of the template's QRS).

Most beats of a stream are its normal beats, so the template is the patient's usual beat: a ventricular beat
correlates poorly with it, a supraventricular one keeps its shape. **Warm-up rule**: while fewer than
:data:`TEMPLATE_BEATS` beats exist the template is the mean of all so far (beat 0 is its own template: 1, 1, 0).
Gain-free (ratios and correlations) and baseline-free (median removed).

The template itself (:func:`running_template`, 256 samples) also travels with each beat, so the model can compare
the beat with the patient's usual beat sample by sample.

Streaming: rows depend only on the current and the ``TEMPLATE_BEATS - 1`` previous windows, so a live stream passes
those as ``history`` with its new windows and gets exactly the offline rows.
"""

from __future__ import annotations

import numpy as np

MORPH_FEATURES = ("corr_qrs", "corr_beat", "log_amp")
TEMPLATE_BEATS = 64
QRS = slice(96 - 25, 96 + 35)


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1) + 1e-12)


def _templates(new: np.ndarray, history: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Median-removed windows ``new`` and their running templates, both float64[m, 256]."""
    new = np.asarray(new, dtype=np.float64)
    m = new.shape[0]
    if history is None or len(history) == 0:
        hist = np.zeros((0, new.shape[1]))
    else:
        hist = np.asarray(history, dtype=np.float64)[-(TEMPLATE_BEATS - 1) :]
    x = np.concatenate((hist, new))
    x = x - np.median(x, axis=1, keepdims=True)
    h = hist.shape[0]
    csum = np.concatenate((np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)))
    i = np.arange(h, h + m)
    lo = np.maximum(0, i - (TEMPLATE_BEATS - 1))  # the history counts as the stream's earlier beats
    return x[h:], (csum[i + 1] - csum[lo]) / (i + 1 - lo)[:, None]


def running_template(new: np.ndarray, history: np.ndarray | None = None) -> np.ndarray:
    """float32[m, 256] running template of each window of ``new`` (arguments as in :func:`morph_features`), rounded
    to 1e-4 (mV) so that it travels compactly in a JSON header.

    >>> w = np.zeros((3, 256), np.float32); w[:, 96] = [1.0, 1.0, 4.0]
    >>> running_template(w)[:, 96].tolist()   # mean of the windows so far
    [1.0, 1.0, 2.0]
    """
    return np.round(_templates(new, history)[1], 4).astype(np.float32)


def morph_features(new: np.ndarray, history: np.ndarray | None = None) -> np.ndarray:
    """float32[m, 3] features of windows ``new`` float32[m, 256], preceded in the stream by ``history`` float32[h, 256]
    (the stream's previous windows; only the last ``TEMPLATE_BEATS - 1`` matter, none at the stream start).

    >>> w = np.zeros((3, 256), np.float32); w[:, 96] = [1.0, 1.0, 4.0]
    >>> morph_features(w).astype(float).round(3).tolist()   # third beat: 4 x the amplitude, template mean 2
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.693]]
    """
    xb, tpl = _templates(new, history)
    amp = np.sqrt((xb[:, QRS] ** 2).mean(axis=1) + 1e-12) / np.sqrt((tpl[:, QRS] ** 2).mean(axis=1) + 1e-12)
    out = np.stack([_corr(xb[:, QRS], tpl[:, QRS]), _corr(xb, tpl), np.log(amp)], axis=1)
    return out.astype(np.float32)
