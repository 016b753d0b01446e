"""Cheap input checks before the model: flat line, clipping, amplitude and spectrum far outside the training range,
and the polarity of the stream's usual window.

Per window (``x: float[B, L]`` in the model's input units at its fs) a few statistics are computed on the device in
two FFTs (:func:`signal_stats`: plain, and Hann-windowed for the spectrum-shape detector); :func:`fit_ranges` sets
the allowed ranges from the training windows and :func:`check` returns a bit mask of failed checks (0 = passed). A
failed window abstains before any MC pass with reason ``signal_quality``.

**Stream context.** A model whose side features carry the stream's usual window (``McModel.context``: a slice of
``aux`` holding a running template, same length and units as ``x``; the ECG model's is the 256-sample running
template of ``features["beat"]``) also gets a statistic of that template: its skewness (:func:`skewness`), > 0 when
the template's largest deflection points up (an upright R wave in MLII), < 0 when it points down (an inverted
lead, or another lead such as V1). It judges the *stream*, not the window: a whole-stream shift (electrodes
reversed, another lead fed as the trained one) fails it on every beat, while any single odd beat does not move the
template. The same code serves every modality with a context; one without (vibration) has NaN and no check.

Range rule (the same for every modality, stated once): a statistic fails when it lies outside the training
[0.05 %, 99.95 %] quantile range widened by ``AMPLITUDE_MARGIN`` (amplitude, a factor 2 either way),
``RATIO_MARGIN`` (spectral shares, ±0.05 absolute) or ``POLARITY_MARGIN`` (template skewness, 0.5): "far outside
the training range", not merely rare. Polarity is bounded below only: a template more upright than any training
one is the trained lead at its clearest, not a shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import torch
from torch import Tensor

from models.controller_card import QualityRanges
from models.reductions import row_median

Q_LO, Q_HI = 0.0005, 0.9995
AMPLITUDE_MARGIN = math.log(2.0)  # in log-RMS units: a factor 2 beyond the training range
RATIO_MARGIN = 0.05
FLAT_FACTOR = 0.1  # a flat line: peak-to-peak below a tenth of the training 0.05 % quantile
CLIP_TOL = 1e-3  # a sample is "at the extreme" within this share of the window's peak-to-peak
MIN_CLIP_FRACTION = 0.02  # never call clipping below 2 % of samples stuck at an extreme
LF_BINS = 2  # lowest non-DC FFT bins = slow baseline drift
# chosen on DS1 only, before any shift-benchmark run: leave-records-out (each DS1 record held out, the bound fitted on
# 17 of the other 21, random draws), the knee of the held-out false-alarm rate over margins 0, 0.25, 0.5, 1
# (README, "Knowing when it does not know")
POLARITY_MARGIN = 0.5
N_BANDS = 16
# half-width of a spectral line under the Hann window: its main lobe spans ±2 FFT bins
LINE_HALF_WIDTH_BINS = 2


class QualityFlag(IntFlag):
    """Bits of the quality verdict (0 = all checks passed).

    >>> QualityFlag(5).names()
    ['flat', 'amplitude']
    """

    FLAT = 1
    CLIPPED = 2
    AMPLITUDE = 4
    SPECTRUM = 8
    POLARITY = 16  # the stream's usual window (its template) points the wrong way: inverted or another lead

    def names(self) -> list[str]:
        return [f.name.lower() for f in QualityFlag if f in self]


@dataclass(frozen=True)
class SignalStats:
    """Per-window statistics, float32[B] each (on the device of the input); ``spectrum`` float32[B, L // 2]: the
    Hann-windowed power spectrum (FFT bins 1 .. L/2, bin j at j·fs/L Hz), the input of the novelty gate's
    spectrum-shape detector; ``polarity``: skewness of the stream context (NaN when the model has none)."""

    ptp: Tensor
    clip_fraction: Tensor
    log_rms: Tensor
    hf_ratio: Tensor
    lf_ratio: Tensor
    spectrum: Tensor
    polarity: Tensor

    def index(self, idx: Tensor) -> SignalStats:
        return SignalStats(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def to(self, device: torch.device | str) -> SignalStats:
        return SignalStats(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @staticmethod
    def cat(parts: list[SignalStats]) -> SignalStats:
        return SignalStats(*(torch.cat([getattr(p, f) for p in parts]) for f in SignalStats.__dataclass_fields__))


def signal_stats(x: Tensor, context: Tensor | None = None) -> SignalStats:
    """Statistics of windows ``x: float[B, L]`` and of their stream context ``float[B, C]`` (None: none).

    ptp = max − min; clip_fraction = share of samples within CLIP_TOL·ptp of the max or of the min;
    log_rms = log RMS of x − median(x) (floor 1e-12); hf_ratio = power above fs/4 (upper half of the band) / total;
    lf_ratio = power in the LF_BINS lowest non-DC bins / total (mean removed, total floor 1e-20);
    spectrum = power of the mean-removed window under a Hann window, bins 1 .. L/2 (the window keeps a strong
    low-frequency wave from leaking into the high bins, and a spectral line within ±2 bins of its frequency);
    polarity = :func:`skewness` of the context.

    >>> s = signal_stats(torch.ones(1, 64))
    >>> float(s.ptp[0]), float(s.clip_fraction[0])
    (0.0, 1.0)
    """
    x = x.to(torch.float32)
    hi, lo = x.amax(1), x.amin(1)
    ptp = hi - lo
    tol = CLIP_TOL * ptp[:, None]
    clip = ((x >= hi[:, None] - tol) | (x <= lo[:, None] + tol)).float().mean(1)
    centred = x - row_median(x)
    log_rms = centred.pow(2).mean(1).clamp_min(1e-24).sqrt().log()
    zero_mean = x - x.mean(1, keepdim=True)
    power = torch.fft.rfft(zero_mean, dim=1).abs().pow(2)[:, 1:]
    total = power.sum(1).clamp_min(1e-20)
    n_bins = power.shape[1]
    hf = power[:, n_bins // 2 :].sum(1) / total
    lf = power[:, :LF_BINS].sum(1) / total
    hann = torch.hann_window(x.shape[1], periodic=False, device=x.device)
    spectrum = torch.fft.rfft(zero_mean * hann, dim=1).abs().pow(2)[:, 1 : x.shape[1] // 2 + 1]
    polarity = torch.full_like(ptp, float("nan")) if context is None else skewness(context.to(x))
    return SignalStats(ptp, clip, log_rms, hf, lf, spectrum, polarity)


def skewness(t: Tensor) -> Tensor:
    """float32[B] skewness (third standardised moment) of each row of ``t: float[B, C]``: > 0 when the largest
    deflection from the mean points up, < 0 when down; gain- and offset-free (0 for a constant row).

    >>> spike = torch.zeros(1, 64); spike[0, 20] = 1.0
    >>> round(float(skewness(spike)[0]), 2), round(float(skewness(-3 * spike + 5)[0]), 2)
    (7.81, -7.81)
    """
    t = t.to(torch.float32)
    c = t - t.mean(1, keepdim=True)
    m2 = c.pow(2).mean(1)
    return torch.where(m2 > 1e-12, c.pow(3).mean(1) / m2.clamp_min(1e-12).pow(1.5), torch.zeros_like(m2))


def band_edges(n_bins: int, n_bands: int = N_BANDS) -> list[int]:
    """Edges (bin indices, 0 .. n_bins) of up to ``n_bands`` log-spaced, non-empty bands.

    >>> band_edges(128, 4)
    [0, 3, 11, 38, 128]
    """
    inner = np.unique(np.round(np.geomspace(1, n_bins, n_bands + 1)[1:-1]).astype(int)).tolist()
    return [0, *(e for e in inner if 0 < e < n_bins), n_bins]


def band_log_shares(spectrum: Tensor, keep: Tensor | None = None) -> Tensor:
    """float[B, N] log share of the power of ``spectrum`` float[B, n_bins] (:attr:`SignalStats.spectrum`) in each of
    the N :func:`band_edges` bands, counting only the bins where ``keep`` bool[n_bins] is True (None: all): the shape
    of the spectrum, whatever the amplitude (floor 1e-8 on shares, 1e-20 on the total).

    >>> p = torch.tensor([[1.0, 1.0, 2.0, 4.0]])   # 4 bins: 4 one-bin bands
    >>> band_log_shares(p).exp().round(decimals=3).tolist()
    [[0.125, 0.125, 0.25, 0.5]]
    >>> band_log_shares(p, torch.tensor([True, True, True, False])).exp().round(decimals=3).tolist()
    [[0.25, 0.25, 0.5, 0.0]]
    """
    p = spectrum if keep is None else spectrum * keep.to(spectrum)
    edges = band_edges(p.shape[1])
    total = p.sum(1).clamp_min(1e-20)
    cum = torch.nn.functional.pad(p.cumsum(1), (1, 0))
    return ((cum[:, edges[1:]] - cum[:, edges[:-1]]) / total[:, None] + 1e-8).log()


def lines_kept(length: int, fs: float | None, lines_hz: tuple[float, ...] = ()) -> Tensor:
    """bool[length // 2]: the FFT bins 1 .. length/2 of a window of ``length`` samples at ``fs`` Hz that lie more
    than :data:`LINE_HALF_WIDTH_BINS` bins from every harmonic (up to fs/2) of every frequency in ``lines_hz`` (all
    True without lines).

    >>> kept = lines_kept(256, 360.0, (60.0,))   # bins 1.41 Hz apart; 60, 120 and 180 Hz and 2 bins either side
    >>> (~kept).nonzero().squeeze(1).add(1).tolist()
    [41, 42, 43, 44, 84, 85, 86, 87, 126, 127, 128]
    """
    n_bins = length // 2
    if not lines_hz:
        return torch.ones(n_bins, dtype=torch.bool)
    if fs is None:
        raise ValueError(f"spectral lines to leave out ({lines_hz} Hz) need the input rate fs")
    freq = np.arange(1, n_bins + 1) * fs / length
    near = np.zeros(n_bins, dtype=bool)
    for f0 in lines_hz:
        harmonics = np.arange(f0, fs / 2 + f0, f0)
        near |= (np.abs(freq[:, None] - harmonics[None, :]) <= LINE_HALF_WIDTH_BINS * fs / length).any(1)
    return torch.as_tensor(~near)


def bands_below(length: int, fs: float | None, band_hz: float | None) -> int:
    """How many of the leading :func:`band_edges` bands of a window of ``length`` samples at ``fs`` Hz lie wholly at
    or below ``band_hz`` (None: all of them, whatever ``fs``). A band covers FFT bins ``edges[i] + 1 .. edges[i + 1]``
    (bin j is at ``j · fs / length`` Hz).

    >>> bands_below(256, 360.0, 40.0), bands_below(256, 360.0, None), bands_below(256, 360.0, 1e6)
    (10, 15, 15)
    """
    edges = band_edges(length // 2)
    if band_hz is None:
        return len(edges) - 1
    if fs is None:
        raise ValueError(f"a spectrum band limit ({band_hz:g} Hz) needs the input rate fs")
    tops = np.asarray(edges[1:]) * fs / length
    n = int(np.count_nonzero(tops <= band_hz + 1e-9))
    if n < 2:
        raise ValueError(f"a spectrum band limit of {band_hz:g} Hz leaves fewer than 2 bands at fs = {fs:g} Hz, "
                         f"{length} samples")
    return n


def band_shape(bands: Tensor, n: int, floor: Tensor | None = None) -> Tensor:
    """The spectrum's shape judged against a band limit, float[B, N]: the log power of every band of ``bands``
    float[B, N] (:func:`band_log_shares`) relative to the power of the leading ``n`` bands (those below
    the limit); the ``N − n`` bands above it are floored at ``floor`` float[N − n] (their training means).

    Below the limit this is the shape whatever the total; above it only *excess* power counts: a source sampled at
    a lower rate has none there (it reads as the floor, like a typical training window), while noise that adds
    power there (muscle) still stands out.

    >>> b = torch.tensor([[0.5, 0.3, 0.2]]).log()   # shares of three bands
    >>> band_shape(b, 2).exp().round(decimals=3).tolist()   # relative to the power of the first two
    [[0.625, 0.375, 0.25]]
    >>> band_shape(b, 2, floor=torch.tensor([0.5]).log()).exp().round(decimals=3).tolist()
    [[0.625, 0.375, 0.5]]
    """
    z = bands - torch.logsumexp(bands[:, :n], dim=1, keepdim=True)
    if floor is None or n >= z.shape[1]:
        return z
    return torch.cat([z[:, :n], torch.maximum(z[:, n:], floor.to(z))], dim=1)


def _range(v: np.ndarray, margin: float) -> tuple[float, float]:
    lo, hi = np.quantile(v, [Q_LO, Q_HI])
    return float(lo - margin), float(hi + margin)


def polarity_bound(polarity: np.ndarray) -> float | None:
    """Lowest allowed template skewness: the training 0.05 % quantile − POLARITY_MARGIN (None without a context).

    >>> polarity_bound(np.linspace(1.0, 3.0, 2001))
    0.501
    >>> polarity_bound(np.full(4, np.nan)) is None
    True
    """
    if not np.isfinite(polarity).all():
        return None
    return round(float(np.quantile(polarity, Q_LO) - POLARITY_MARGIN), 6)


def fit_ranges(stats: SignalStats) -> QualityRanges:
    """Allowed ranges from training windows' statistics (see the module docstring for the rule)."""
    s = {f: getattr(stats, f).detach().cpu().double().numpy() for f in SignalStats.__dataclass_fields__
         if f != "spectrum"}
    ranges = QualityRanges(
        flat_ptp=float(FLAT_FACTOR * np.quantile(s["ptp"], Q_LO)),
        clip_fraction=float(max(np.quantile(s["clip_fraction"], Q_HI), MIN_CLIP_FRACTION)),
        log_rms=_range(s["log_rms"], AMPLITUDE_MARGIN),
        hf_ratio=_range(s["hf_ratio"], RATIO_MARGIN),
        lf_ratio=_range(s["lf_ratio"], RATIO_MARGIN),
        polarity=polarity_bound(s["polarity"]),
    )
    flags = check(stats, ranges)
    return QualityRanges(**{**ranges.__dict__, "train_flag_rate": round(float((flags != 0).float().mean()), 6)})


def check(stats: SignalStats, r: QualityRanges) -> Tensor:
    """int64[B] bit mask of :class:`QualityFlag` (0 = passed)."""

    def outside(v: Tensor, bounds: tuple[float, float]) -> Tensor:
        return (v < bounds[0]) | (v > bounds[1])

    flat = stats.ptp < r.flat_ptp
    clipped = ~flat & (stats.clip_fraction > r.clip_fraction)
    amplitude = ~flat & outside(stats.log_rms, r.log_rms)
    spectrum = ~flat & (outside(stats.hf_ratio, r.hf_ratio) | outside(stats.lf_ratio, r.lf_ratio))
    # NaN (no context) never fails; a card without a polarity bound checks nothing
    polarity = stats.polarity < (-math.inf if r.polarity is None else r.polarity)
    return (flat.long() * QualityFlag.FLAT + clipped.long() * QualityFlag.CLIPPED
            + amplitude.long() * QualityFlag.AMPLITUDE + spectrum.long() * QualityFlag.SPECTRUM
            + polarity.long() * QualityFlag.POLARITY)
