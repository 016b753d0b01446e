"""Shifted test windows for the shift benchmark (`sci-monitor evaluate-shift`): never used to fit or choose anything.

Every shift is built from the test split of the shared recordings (ECG: DS2; vibration: the test time blocks), with
a fixed seed, and keeps the true labels, so "answered and wrong" is measurable. Recipes:

ECG (``ecg_shifts``; ``ECG_WINDOWS`` beats drawn once from DS2, the same beats in every condition):
- ``lead2``: the record's other lead (V1, V2, V4 or V5; V5 in record 114, whose MLII is channel 1) fed as if it
  were MLII, same beats, same RR features;
  every ECG shift applies to whole records (streams), so the per-stream template and morphology features are
  computed from the shifted stream, as live;
- ``baseline_wander_{0,6,12}db``: + sum of 3 sinusoids, frequencies uniform in 0.05–0.5 Hz, random phases and
  amplitudes (respiration / movement drift);
- ``muscle_{0,6,12}db``: + Gaussian noise band-passed 20–150 Hz (4th-order Butterworth; EMG);
- ``electrode_motion_{0,6,12}db``: + Gaussian noise band-passed 0.5–10 Hz plus one step of random sign and height
  (2 × the noise RMS) at a random sample (electrode-motion artefact);
  SNR is per window: 10·log10(P_signal / P_noise), P = mean square of the mean-removed window;
- ``gain_x0.25``, ``gain_x4``: amplitude scaled; ``polarity``: sign flipped;
- ``resampled_250hz``, ``resampled_500hz``: the MLII record resampled (:func:`models.data.recording.resample`) to
  250 / 500 Hz as if recorded at that rate, then windowed and given RR features as if it were 360 Hz (the announced
  rate).
- ``source_128hz``, ``source_250hz``: not a fault but the commonest difference between ECG sources: the MLII record
  as a device sampling at 128 / 250 Hz records it (everything above 64 / 125 Hz lost), honestly resampled to 360 Hz
  (:func:`models.data.recording.resample`, what ``sci-monitor replay --files`` does), windows at the fiducials a
  live stream finds on it, the record's RR features. The model should be robust to it and the gate should let it
  through: its escalation rate says whether new sources flood the operator.
- ``mains_50hz``, ``mains_60hz``: also a false-alarm check, the commonest interference in real recordings: the MLII
  record + mains hum of ``MAINS_MV`` mV at 50 / 60 Hz with a third harmonic of a third of it (random phase per
  record), windows at the fiducials a live stream finds on it.
Vibration (``vibration_shifts``; the cwru test frames):
- ``gain_x0.25``, ``gain_x4``; ``resampled_8khz``, ``resampled_16khz``: each recording resampled to 8 / 16 kHz as if
  recorded at that rate, frames from its test time block announced as 12 kHz;
- ``normal_wrong_rate``: the 48 kHz normal baseline read as if it were 12 kHz (no resampling), test block frames;
- ``load_shift`` (``load_shift_frames``): for the ``cwru-loadshift`` model, load-3 fault frames (its test split)
  against the test time blocks of loads 0–2 (never used by that model).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.io
from scipy.signal import butter, sosfiltfilt

from models.data import cwru, mitdb
from models.data.fiducial import r_fiducial
from models.data.morph import morph_features, running_template
from models.data.recording import resample
from models.training import Arrays

ECG_WINDOWS = 3000
MAINS_MV = 0.1  # hum amplitude: mild (MIT-BIH's R waves are about 1-2 mV); devices without a notch show more
SNRS_DB = (0, 6, 12)
SEED = 20240601


def _power(x: np.ndarray) -> np.ndarray:
    return np.mean((x - x.mean(1, keepdims=True)) ** 2, axis=1, keepdims=True)


def add_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled per window so that 10·log10(P_x / P_noise) = snr_db (P: mean-removed mean square)."""
    scale = np.sqrt(_power(x) / np.maximum(_power(noise), 1e-20) / 10 ** (snr_db / 10))
    return (x + noise * scale).astype(np.float32)


def _bandpassed(rng: np.random.Generator, n: int, length: int, fs: float, lo: float, hi: float) -> np.ndarray:
    pad = length  # filter a longer stretch and keep its middle: no edge transients
    sos = butter(4, [lo, hi], btype="band", fs=fs, output="sos")
    return sosfiltfilt(sos, rng.standard_normal((n, length + 2 * pad)), axis=1)[:, pad:-pad]


def baseline_wander(rng: np.random.Generator, n: int, length: int, fs: float) -> np.ndarray:
    t = np.arange(length) / fs + rng.uniform(0, 60, (n, 1))
    f = rng.uniform(0.05, 0.5, (n, 3, 1))
    a = rng.uniform(0.5, 1.0, (n, 3, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 3, 1))
    return (a * np.sin(2 * np.pi * f * t[:, None, :] + ph)).sum(1)


def muscle(rng: np.random.Generator, n: int, length: int, fs: float) -> np.ndarray:
    return _bandpassed(rng, n, length, fs, 20.0, min(150.0, 0.45 * fs))


def electrode_motion(rng: np.random.Generator, n: int, length: int, fs: float) -> np.ndarray:
    x = _bandpassed(rng, n, length, fs, 0.5, 10.0)
    rms = np.sqrt(np.mean(x**2, axis=1, keepdims=True))
    at = rng.integers(0, length, (n, 1))
    step = (np.arange(length)[None, :] >= at) * rng.choice([-2.0, 2.0], (n, 1)) * rms
    return x + step


def _other_lead(name: str) -> np.ndarray:
    import wfdb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = wfdb.rdrecord(str(mitdb.record_path(name)))
    other = next(i for i, s in enumerate(rec.sig_name) if s != mitdb.LEAD)
    return rec.p_signal[:, other].astype(np.float32)


def _from_source(name: str, fs_source: int) -> np.ndarray:
    """MLII of record ``name`` as a device sampling at ``fs_source`` Hz records it, resampled back to 360 Hz."""
    sig = mitdb.load_record(name).signal
    return resample(resample(sig, mitdb.FS, fs_source), fs_source, mitdb.FS)[: sig.size]


def _resampled_record(name: str, fs_true: int) -> tuple[np.ndarray, np.ndarray]:
    """MLII recorded at ``fs_true`` (resampled from 360 Hz) and its beat samples at that rate."""
    rec = mitdb.load_record(name)
    sig = resample(rec.signal, mitdb.FS, fs_true)
    return sig, np.rint(rec.beat_samples * fs_true / mitdb.FS).astype(np.int64)


def _stream_aux(rr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The ECG side features of a stream's windows ``x`` float32[n, 256] (time order) with RR features ``rr``: the
    template and morphology features come from the stream's own (shifted) beats, as a live stream would compute
    them (:attr:`models.data.mitdb.BeatSet.aux` order)."""
    return np.concatenate((rr, morph_features(x), running_template(x)), axis=1).astype(np.float32)


def ecg_shifts(n: int = ECG_WINDOWS, seed: int = SEED) -> tuple[Arrays, dict[str, Arrays]]:
    """(in-distribution reference, {shift: windows}) of ``n`` DS2 beats drawn once; see the module docstring.

    A shift applies to whole records (streams): every beat of a sampled record is shifted, its per-stream features
    computed from the shifted stream, and the sampled beats kept."""
    rng = np.random.default_rng(seed)
    beats = mitdb.load_beats(mitdb.DS2)
    idx = np.sort(rng.choice(len(beats), size=min(n, len(beats)), replace=False))
    b = beats.subset(idx)
    ref = Arrays(b.x, b.aux, b.y)
    names = [str(r) for r in np.unique(b.record)]
    per_record = {r: beats.subset(beats.record == r) for r in names}
    picked = {r: np.searchsorted(per_record[r].sample, b.sample[b.record == r]) for r in names}

    def whole_streams(shift) -> Arrays:
        """``shift(record, windows) -> shifted windows`` applied per record; the sampled beats in record order."""
        xs, aux, ys = [], [], []
        for r in names:
            rb, keep = per_record[r], picked[r]
            x = shift(r, rb.x)
            xs.append(x[keep])
            aux.append(_stream_aux(rb.rr, x)[keep])
            ys.append(rb.y[keep])
        return Arrays(np.concatenate(xs), np.concatenate(aux), np.concatenate(ys))

    shifts: dict[str, Arrays] = {}
    def _windows_at_beats(r: str, sig: np.ndarray) -> np.ndarray:
        """Windows of ``sig`` (360 Hz) centred on the fiducial a live stream of it would find at each of record r's
        beats (clipped so that every beat of the MLII stream keeps a window)."""
        fid = np.clip(r_fiducial(sig, per_record[r].sample, mitdb.FS), mitdb.BEFORE, sig.size - mitdb.AFTER)
        return mitdb.beat_windows(sig, fid)[0]

    shifts["lead2"] = whole_streams(lambda r, x: _windows_at_beats(r, _other_lead(r)))
    length = b.x.shape[1]
    for kind, make in (("baseline_wander", baseline_wander), ("muscle", muscle),
                       ("electrode_motion", electrode_motion)):
        for snr in SNRS_DB:
            shifts[f"{kind}_{snr}db"] = whole_streams(
                lambda r, x, make=make, snr=snr: add_at_snr(x, make(rng, len(x), length, float(mitdb.FS)), snr))
    for fs_source in (128, 250):
        shifts[f"source_{fs_source}hz"] = whole_streams(
            lambda r, x, fs_source=fs_source: _windows_at_beats(r, _from_source(r, fs_source)))
    shifts["gain_x0.25"] = whole_streams(lambda r, x: x * np.float32(0.25))
    shifts["gain_x4"] = whole_streams(lambda r, x: x * np.float32(4.0))
    shifts["polarity"] = whole_streams(lambda r, x: -x)
    for fs_true in (250, 500):
        xs, auxs, ys = [], [], []
        for r in names:
            rb, keep = per_record[r], picked[r]
            sig, peaks_all = _resampled_record(r, fs_true)
            rec_beats = mitdb.load_record(r).beat_samples
            pos = np.searchsorted(rec_beats, rb.sample)  # this record's N/S/V/F beats among all its beats
            peaks_all = r_fiducial(sig, peaks_all, mitdb.FS)  # announced as 360 Hz, as a live stream would
            rr = mitdb.rr_features(peaks_all, mitdb.FS)[pos]
            x, kept = mitdb.beat_windows(sig, peaks_all[pos])
            aux = _stream_aux(rr[kept], x)
            sel = np.zeros(len(rb), bool)
            sel[keep] = True
            sel = sel[kept]
            xs.append(x[sel])
            auxs.append(aux[sel])
            ys.append(rb.y[kept][sel])
        shifts[f"resampled_{fs_true}hz"] = Arrays(np.concatenate(xs), np.concatenate(auxs), np.concatenate(ys))
    for f0 in (50.0, 60.0):
        shifts[f"mains_{f0:.0f}hz"] = whole_streams(
            lambda r, x, f0=f0: _windows_at_beats(r, _with_hum(mitdb.load_record(r).signal, f0, rng)))
    return ref, shifts


def _with_hum(sig: np.ndarray, f0: float, rng: np.random.Generator) -> np.ndarray:
    """``sig`` (360 Hz, mV) + mains hum: ``MAINS_MV`` mV at ``f0`` Hz and a third of that at 3·f0, random phase."""
    t = np.arange(sig.size) / mitdb.FS
    ph = rng.uniform(0, 2 * np.pi)
    hum = MAINS_MV * (np.sin(2 * np.pi * f0 * t + ph) + np.sin(2 * np.pi * 3 * f0 * t + 3 * ph) / 3)
    return (sig + hum).astype(np.float32)


def _test_block_frames(signal: np.ndarray, label: int) -> Arrays:
    start, stop = cwru.split_blocks(signal.size)["test"]
    starts = cwru.frame_starts(start, stop, cwru.FRAME)
    x = np.stack([signal[s : s + cwru.FRAME] for s in starts]).astype(np.float32)
    return Arrays(x, None, np.full(len(starts), label, np.int64))


def _concat(parts: list[Arrays]) -> Arrays:
    return Arrays(np.concatenate([p.x for p in parts]), None, np.concatenate([p.y for p in parts]))


def vibration_shifts() -> tuple[Arrays, dict[str, Arrays]]:
    """(in-distribution reference = the cwru test frames, {shift: frames}); see the module docstring."""
    test = cwru.load_frames("test")
    ref = Arrays(test.x, None, test.y)
    shifts = {"gain_x0.25": Arrays(test.x * np.float32(0.25), None, test.y),
              "gain_x4": Arrays(test.x * np.float32(4.0), None, test.y)}
    recs = cwru.list_recordings(read_rpms=False)
    for fs_true in (8000, 16000):
        parts = []
        for rec in recs:
            sig = resample(cwru.load_signal(rec), cwru.FS, fs_true)
            parts.append(_test_block_frames(sig, rec.label))
        shifts[f"resampled_{fs_true // 1000}khz"] = _concat(parts)
    shifts["normal_wrong_rate"] = normal_at_wrong_rate(recs)
    return ref, shifts


def normal_at_wrong_rate(recs: list[cwru.CwruRecording] | None = None) -> Arrays:
    """Test-block frames of the 48 kHz normal baseline read as if it were 12 kHz (no resampling)."""
    parts = []
    for rec in recs or cwru.list_recordings(read_rpms=False):
        if rec.fault != "normal":
            continue
        var = next(v for v in scipy.io.whosmat(str(rec.path)) if v[0].endswith("_DE_time"))[0]
        raw = np.asarray(scipy.io.loadmat(str(rec.path), variable_names=[var])[var], np.float32).ravel()
        parts.append(_test_block_frames(raw, rec.label))
    return _concat(parts)


def load_shift_frames() -> tuple[Arrays, Arrays]:
    """(reference: test time blocks of loads 0–2, shifted: load-3 fault frames) for the cwru-loadshift model."""
    ref = cwru.load_frames("test", loads=(0, 1, 2))
    shifted = cwru.load_shift_frames(train_loads=(0, 1, 2), test_load=3).test
    shifted = shifted.subset(shifted.load == 3)
    return Arrays(ref.x, None, ref.y), Arrays(shifted.x, None, shifted.y)
