"""Streaming R-peak detector (Pan–Tompkins style) for ECG fed in chunks of arbitrary length.

Pipeline per chunk, all causal with carried state so that chunking does not change any sample:

1. band-pass 5–15 Hz (Butterworth, ``sosfilt`` with carried ``zi``, initialised to the steady state of the
   first sample so the baseline offset causes no start-up transient);
2. five-point derivative ``(2x[n] + x[n-1] - x[n-3] - 2x[n-4]) · fs/8`` and squaring;
3. moving-window integration over 150 ms (MWI);
4. candidates = local maxima of the MWI (``find_peaks``) that are the maximum of the MWI within ±200 ms
   (the refractory period). A candidate at sample p is decided once samples up to p + 200 ms have arrived,
   which makes the candidate set independent of chunk boundaries;
5. adaptive thresholds over the candidates (sequential over candidates, not samples): signal/noise levels
   SPKI/NPKI, THR1 = NPKI + 0.25·(SPKI − NPKI), THR2 = THR1/2, learned on the first 2 s; THR1 halved while
   the rhythm is irregular (last RR outside 92–116 % of the regular RR average), as in Pan & Tompkins (1985);
   T-wave rejection (RR < 360 ms and max slope < half of the previous QRS slope); search-back for the largest
   candidate above THR2 when no beat was found for 1.66 × the regular RR average; after 2 × that without any
   beat, SPKI decays towards NPKI so the detector recovers from a sudden amplitude drop;
6. R position = expected QRS centre (MWI peak minus the group delays of band-pass at 10 Hz, derivative and
   MWI), refined to the extremum of the band-passed signal (delay compensated) within ±50 ms and then to the
   ECG contract's R fiducial (:func:`models.data.fiducial.r_fiducial`: the peak of the QRS slope-energy envelope
   within ±50 ms, repeated until it stays), the point offline windows are centred on too.

``push`` returns absolute sample indices (int64) of newly confirmed peaks, in increasing order; a peak is
confirmed about 200–300 ms after the R wave (later when found by search-back). ``flush`` decides the tail.
Chunk-size independence: all filters are exact across chunks, candidates depend only on ±200 ms of MWI and
the thresholds only on the ordered candidates, so any chunking gives identical peaks. The one documented
edge effect: an exactly flat MWI plateau that is a local maximum and straddles a decision boundary may be
reported (or not) differently; it only happens on exactly constant input. A beat in the last ~100 ms of a
stream has no MWI maximum yet and is not reported.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import butter, find_peaks, group_delay, sos2tf, sosfilt, sosfilt_zi

from models.data import fiducial

__all__ = ["StreamingRPeakDetector", "detect_rpeaks"]


@dataclass(frozen=True, slots=True)
class _Candidate:
    p: int  # MWI peak, absolute sample index
    amp: float  # MWI value
    slope: float  # max |derivative| in the 150 ms before p
    r: int  # refined R position, absolute sample index


class StreamingRPeakDetector:
    """Streaming R-peak detector at ``fs`` Hz; ``push(chunk)`` -> int64[m] absolute indices of new peaks.

    ``chunk``: float[n] (any n >= 0, mV or any unit); indices count samples since the first pushed sample.
    """

    LEARN_S = 2.0
    REFRACTORY_S = 0.200
    MWI_S = 0.150
    REFINE_S = 0.050  # band-pass extremum search half-width, s
    T_WAVE_RR_S = 0.360
    SEARCHBACK_FACTOR = 1.66
    MAX_NOISE = 64  # candidates kept for search-back

    def __init__(self, fs: float, band_hz: tuple[float, float] = (5.0, 15.0), history_s: float = 2.0):
        if fs <= 0:
            raise ValueError(f"fs must be > 0 Hz, got {fs}")
        self.fs = float(fs)
        self._sos = butter(2, band_hz, btype="bandpass", fs=self.fs, output="sos")
        self._deriv = np.array([2.0, 1.0, 0.0, -1.0, -2.0]) * (self.fs / 8.0)
        self._w = max(1, round(self.MWI_S * self.fs))
        self._mwi_b = np.full(self._w, 1.0 / self._w)
        self._refr = max(1, round(self.REFRACTORY_S * self.fs))
        self._half = max(1, round(self.REFINE_S * self.fs))
        b, a = sos2tf(self._sos)
        centre = float(np.sqrt(band_hz[0] * band_hz[1]))
        self._bp_delay = round(float(group_delay((b, a), w=[centre], fs=self.fs)[1][0]))
        self._delay = self._bp_delay + 2 + (self._w - 1) // 2  # MWI peak -> QRS centre, samples
        self._learn = max(1, round(self.LEARN_S * self.fs))
        reach = round(fiducial.REACH_S * self.fs) + 1  # raw history the fiducial search reads before r1
        need = self._delay + 2 * self._half + reach + self._w + 2 * self._refr
        self._hist = max(round(history_s * self.fs), need)

        self._zi_bp: np.ndarray | None = None
        # buffers of raw, band-passed, derivative and MWI signals from absolute index self._off
        self._off = 0
        self._raw = np.zeros(0)
        self._bp = np.zeros(0)
        self._d = np.zeros(0)
        self._mwi = np.zeros(0)
        self._n = 0  # samples pushed so far
        self._next = 0  # first MWI index whose candidate status is not decided yet
        self._flushed = False
        self._queue: deque[_Candidate] = deque()  # decided candidates not yet classified
        # threshold state
        self._ready = False
        self._spki = 0.0
        self._npki = 0.0
        self._last: _Candidate | None = None
        self._rr: deque[int] = deque(maxlen=8)  # recent RR (samples), all
        self._rr_reg: deque[int] = deque(maxlen=8)  # recent regular RR
        self._rr_avg2: float | None = None
        self._irregular = 0
        self._noise: list[_Candidate] = []  # candidates since the last QRS that were not beats
        self.peaks_found = 0

    # ----------------------------------------------------------------------------------------------------
    # public API

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Feed samples; returns int64[m] absolute indices of newly confirmed R peaks (increasing)."""
        if self._flushed:
            raise RuntimeError("push() after flush(): create a new StreamingRPeakDetector for a new stream")
        x = np.asarray(chunk, dtype=np.float64).ravel()
        if not np.isfinite(x).all():
            raise ValueError(
                f"chunk has non-finite samples at offsets {np.flatnonzero(~np.isfinite(x))[:5].tolist()}; "
                "interpolate or drop them before push() (they would corrupt the filter state)"
            )
        if x.size:
            self._filter(x)
        return self._advance(final=False)

    def flush(self) -> np.ndarray:
        """End of stream: decide the tail; returns int64[m] of the last peaks. No push() after this."""
        if self._flushed:
            return np.zeros(0, np.int64)
        out = self._advance(final=True)
        self._flushed = True
        return out

    # ----------------------------------------------------------------------------------------------------
    # signal processing (vectorized per chunk)

    def _filter(self, x: np.ndarray) -> None:
        if self._zi_bp is None:
            self._zi_bp = sosfilt_zi(self._sos) * x[0]
        bp, self._zi_bp = sosfilt(self._sos, x, zi=self._zi_bp)
        # FIR stages as 'valid' convolutions over the buffered history (zeros before the first sample)
        d = np.convolve(np.concatenate((self._tail(self._bp, self._deriv.size - 1), bp)), self._deriv, "valid")
        d_hist = self._tail(self._d, self._w - 1)
        mwi = np.convolve(np.concatenate((d_hist * d_hist, d * d)), self._mwi_b, "valid")
        self._raw = np.concatenate((self._raw, x))
        self._bp = np.concatenate((self._bp, bp))
        self._d = np.concatenate((self._d, d))
        self._mwi = np.concatenate((self._mwi, mwi))
        self._n += x.size

    @staticmethod
    def _tail(buf: np.ndarray, k: int) -> np.ndarray:
        """Last ``k`` samples of ``buf``, zero-padded in front when shorter."""
        if buf.size >= k:
            return buf[buf.size - k :]
        return np.concatenate((np.zeros(k - buf.size), buf))

    def _advance(self, final: bool) -> np.ndarray:
        end = self._n if final else self._n - self._refr  # candidates at p < end can be decided now
        if end > self._next:
            self._queue.extend(self._candidates(self._next, end))
            self._next = end
        if not self._ready and (self._n >= self._learn or (final and self._n > 0)):
            self._init_thresholds()
        out: list[int] = []
        if self._ready:
            while self._queue:
                self._classify(self._queue.popleft(), out)
            if final:
                self._search_back(self._n, out)
        self._trim()
        return np.asarray(out, dtype=np.int64)

    def _candidates(self, start: int, end: int) -> list[_Candidate]:
        """Candidates with MWI peak in [start, end), using MWI context [start − refr, end + refr)."""
        off = self._off
        lo = max(start - self._refr, off)
        hi = min(end + self._refr, self._n)
        seg = self._mwi[lo - off : hi - off]
        pk, _ = find_peaks(seg, height=1e-12)
        pk = pk[(pk + lo >= start) & (pk + lo < end)]
        if pk.size == 0:
            return []
        # dominant within ±refractory: MWI[p] equals the max of MWI[p - refr, p + refr]
        mx = maximum_filter1d(seg, size=2 * self._refr + 1, mode="constant", cval=-np.inf)
        pk = pk[seg[pk] >= mx[pk]]
        if pk.size == 0:
            return []
        p = pk + lo  # absolute
        n_buf = self._mwi.size
        # max slope over the integration window before p
        idx = np.clip(p[:, None] - off - np.arange(self._w)[None, :], 0, n_buf - 1)
        slope = np.abs(self._d[idx]).max(axis=1)
        r = self._refine(p)
        amp = seg[pk]
        return [
            _Candidate(int(a), float(b), float(c), int(e))
            for a, b, c, e in zip(p.tolist(), amp.tolist(), slope.tolist(), r.tolist(), strict=True)
        ]

    def _refine(self, p: np.ndarray) -> np.ndarray:
        """R positions (absolute) for MWI peaks ``p``: expected QRS centre, refined on band-pass, then to the
        contract's R fiducial (:func:`models.data.fiducial.r_fiducial`, the same function offline data uses)."""
        off, n_buf = self._off, self._mwi.size
        h = np.arange(-self._half, self._half + 1)
        est = p - self._delay
        ib = np.clip(est[:, None] + self._bp_delay + h[None, :] - off, 0, n_buf - 1)
        r1 = est + h[np.abs(self._bp[ib]).argmax(axis=1)]
        return np.clip(fiducial.r_fiducial(self._raw, r1, self.fs, offset=off), 0, self._n - 1)

    def _trim(self) -> None:
        keep_from = max(0, min(self._next, self._n) - self._hist)
        if not self._ready:
            keep_from = 0  # the learning phase needs the first samples of the MWI
        cut = keep_from - self._off
        if cut > 4096 or (cut > 0 and cut > self._raw.size // 2):
            self._raw = self._raw[cut:]
            self._bp = self._bp[cut:]
            self._d = self._d[cut:]
            self._mwi = self._mwi[cut:]
            self._off = keep_from

    # ----------------------------------------------------------------------------------------------------
    # adaptive thresholds (sequential over candidates)

    def _init_thresholds(self) -> None:
        seg = self._mwi[: min(self._learn, self._n) - self._off]
        self._spki = 0.25 * float(seg.max())
        self._npki = 0.5 * float(seg.mean())
        self._ready = True

    @property
    def _thr1(self) -> float:
        thr = self._npki + 0.25 * (self._spki - self._npki)
        return 0.5 * thr if self._irregular else thr  # halved while the rhythm is irregular

    def _rr_limit(self) -> float:
        avg = self._rr_avg2 if self._rr_avg2 is not None else 1.0 * self.fs
        return self.SEARCHBACK_FACTOR * avg

    def _accept(self, c: _Candidate, out: list[int], weight: float) -> None:
        self._spki = weight * c.amp + (1.0 - weight) * self._spki
        if self._last is not None:
            rr = c.r - self._last.r
            self._rr.append(rr)
            avg1 = float(np.mean(self._rr))
            if self._rr_avg2 is None:
                self._rr_avg2 = avg1
            if 0.92 * self._rr_avg2 <= rr <= 1.16 * self._rr_avg2:
                self._rr_reg.append(rr)
                self._rr_avg2 = float(np.mean(self._rr_reg))
                self._irregular = 0
            else:
                self._irregular += 1
                if self._irregular >= 8:  # rhythm changed: restart the regular average from the recent one
                    self._rr_reg.clear()
                    self._rr_reg.extend(self._rr)
                    self._rr_avg2 = avg1
                    self._irregular = 0
        self._last = c
        self._noise.clear()
        out.append(c.r)
        self.peaks_found += 1

    def _search_back(self, p: int, out: list[int]) -> None:
        """Before deciding time p: recover beats missed since the last QRS (largest candidate above THR2)."""
        while True:
            ref = self._last.p if self._last is not None else 0
            if p - ref <= self._rr_limit():
                return
            lo = ref + self._refr if self._last is not None else -1
            pool = [c for c in self._noise if c.p > lo and c.p < p and c.amp > 0.5 * self._thr1]
            if not pool:
                if p - ref > 2.0 * self._rr_limit():  # long without beats: let the signal level decay
                    self._spki = self._npki + 0.5 * (self._spki - self._npki)
                return
            best = max(pool, key=lambda c: c.amp)
            self._noise = [c for c in self._noise if c.p > best.p]
            self._accept(best, out, weight=0.25)

    def _classify(self, c: _Candidate, out: list[int]) -> None:
        self._search_back(c.p, out)
        last = self._last
        if c.amp > self._thr1 and (last is None or c.r - last.r > self._refr):
            is_t = last is not None and c.r - last.r < self.T_WAVE_RR_S * self.fs and c.slope < 0.5 * last.slope
            if not is_t:
                self._accept(c, out, weight=0.125)
                return
        self._npki = 0.125 * c.amp + 0.875 * self._npki
        self._noise.append(c)
        if len(self._noise) > self.MAX_NOISE:
            del self._noise[0]


def detect_rpeaks(signal: np.ndarray, fs: float, chunk: int | None = None) -> np.ndarray:
    """R peaks of a whole recording (int64 sample indices), optionally streamed in chunks of ``chunk``."""
    det = StreamingRPeakDetector(fs)
    x = np.asarray(signal)
    step = x.size if not chunk else int(chunk)
    parts = [det.push(x[i : i + step]) for i in range(0, max(x.size, 1), max(step, 1))]
    parts.append(det.flush())
    return np.concatenate(parts).astype(np.int64)
