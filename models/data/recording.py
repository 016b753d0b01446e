"""A user's own recording, from any source and at any rate: read it, pick its channel, resample it to a model's rate.

The MIT-BIH and CWRU loaders know their datasets; this module reads what a new user brings (``sci-monitor replay
--files``): a WFDB record (any database: rate, leads and units from its header, beat annotations from its ``.atr``
when there is one), a MATLAB ``.mat`` file (one numeric vector per variable, as CWRU ships them), a NumPy ``.npy``
array or a CSV/text file of numbers (one column per channel). Only WFDB headers state their rate; the others need
it from the user (``fs``), and reading a recording at the wrong rate is exactly the shift the monitor is built to
catch, so it is never guessed.

:func:`resample` brings a signal to the rate a model was trained at (polyphase, ``scipy.signal.resample_poly``,
which low-pass filters before decimating: no aliasing when going down, no images when going up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.signal import resample_poly

__all__ = ["FORMATS", "Recording", "finite_runs", "read_recording", "resample", "to_unit"]

FORMATS = ("WFDB (.hea/.dat)", "EDF (.edf)", ".mat", ".npy", ".csv / .txt")
MIN_SAMPLES = 16  # a .mat variable shorter than this is metadata (an RPM, a file number), not a channel
_RATE_DENOMINATOR = 1000  # rational approximation of non-integer rate ratios: error below 1e-6 of the rate
_SCALE_TO = {  # unit -> its factor in the target unit
    "mV": {"mV": 1.0, "uV": 1e-3, "µV": 1e-3, "μV": 1e-3, "V": 1e3},
    "g": {"g": 1.0, "m/s^2": 1 / 9.80665, "m/s2": 1 / 9.80665, "mg": 1e-3},
}


@dataclass(frozen=True)
class Recording:
    """One channel of a recording: ``signal`` float64[L] in ``unit`` at ``fs`` Hz (``unit`` "" when the file does
    not say), named ``channel``, NaN where the recording has a gap (a WFDB invalid sample, a NaN or an infinite
    value in the file: :func:`finite_runs` gives the parts between them); ``beats``: annotated beat positions
    int64[n] (samples at ``fs``) and their symbols str[n] (WFDB ``.atr`` beat codes), or None when the recording has
    no annotations."""

    name: str
    signal: np.ndarray
    fs: float
    channel: str
    unit: str = ""
    beats: tuple[np.ndarray, np.ndarray] | None = None


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """float32[L'] samples of ``x`` [L] at ``fs_in`` Hz brought to ``fs_out`` Hz, ``L' = ceil(L · fs_out / fs_in)``
    (computed in float64); ``x`` itself (as float32) when the rates agree.

    >>> t = np.arange(250) / 250.0
    >>> y = resample(np.sin(2 * np.pi * 5 * t), 250, 360)   # 1 s of a 5 Hz sine
    >>> y.shape, bool(np.abs(y[20:-20] - np.sin(2 * np.pi * 5 * np.arange(360) / 360.0)[20:-20]).max() < 1e-2)
    ((360,), True)
    >>> resample(np.ones(8), 48000, 12000).shape
    (2,)
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if not (math.isfinite(fs_in) and math.isfinite(fs_out) and fs_in > 0 and fs_out > 0):
        raise ValueError(f"sampling rates must be finite and > 0 Hz, got {fs_in} -> {fs_out}")
    if fs_in == fs_out:
        return x.astype(np.float32)
    ratio = Fraction(fs_out / fs_in).limit_denominator(_RATE_DENOMINATOR)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def finite_runs(x: np.ndarray, min_samples: int = 1) -> list[slice]:
    """The maximal runs of finite samples of ``x`` float[L] that are at least ``min_samples`` long, in order: the
    parts of a recording between its gaps.

    >>> finite_runs(np.array([1.0, 2.0, np.nan, np.nan, 3.0, np.inf, 4.0, 5.0, 6.0]), min_samples=2)
    [slice(0, 2, None), slice(6, 9, None)]
    """
    ok = np.concatenate(([False], np.isfinite(np.asarray(x, dtype=np.float64).ravel()), [False]))
    edges = np.flatnonzero(np.diff(ok.astype(np.int8)))  # alternating run starts and ends
    return [slice(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_samples]


def to_unit(x: np.ndarray, unit: str, target: str) -> np.ndarray:
    """``x`` float64[L] converted from ``unit`` to ``target`` (``"mV"`` for ECG, ``"g"`` for vibration); an empty
    ``unit`` (the file does not say) is taken as ``target``.

    >>> to_unit(np.array([500.0, -250.0]), "uV", "mV").tolist()
    [0.5, -0.25]
    >>> to_unit(np.array([1.0]), "", "g").tolist()
    [1.0]
    """
    if not unit or unit == target:
        return np.asarray(x, dtype=np.float64)
    factors = _SCALE_TO.get(target, {})
    if unit not in factors:
        raise ValueError(f"cannot convert {unit!r} to {target!r} (known: {', '.join(factors) or 'none'})")
    return np.asarray(x, dtype=np.float64) * factors[unit]


def _pick(names: list[str], channel: str | None, preferred: tuple[str, ...], source: str) -> int:
    """Index of the channel to read: ``channel`` (exact name, or a name ending in it: ``DE_time`` finds
    ``X097_DE_time``), else the first of ``preferred`` present, else the only one."""
    if channel is not None:
        hits = [i for i, n in enumerate(names) if n == channel] or [i for i, n in enumerate(names)
                                                                      if n.endswith(channel)]
        if len(hits) != 1:
            what = "no" if not hits else "more than one"
            raise ValueError(f"{source} has {what} channel {channel!r} (channels: {', '.join(names)})")
        return hits[0]
    for want in preferred:
        hits = [i for i, n in enumerate(names) if n == want or n.endswith(want)]
        if len(hits) == 1:
            return hits[0]
    if len(names) == 1:
        return 0
    raise ValueError(f"{source} has {len(names)} channels ({', '.join(names)}): choose one with --channel")


def _wfdb(base: Path, channel: str | None, fs: float | None, unit: str | None, preferred: tuple[str, ...]
          ) -> Recording:
    """A WFDB record (``base`` without extension), or an EDF file (``base`` ending in .edf), through wfdb."""
    import warnings

    with warnings.catch_warnings():  # wfdb 4.3 uses a pandas call deprecated since pandas 2
        warnings.filterwarnings("ignore", message=".*inplace keyword.*", module="wfdb")
        import wfdb
        from wfdb.io.convert.edf import read_edf

        rec = read_edf(str(base)) if base.suffix == ".edf" else wfdb.rdrecord(str(base))
        beats = None
        if base.suffix != ".edf" and base.with_suffix(".atr").is_file():
            ann = wfdb.rdann(str(base), "atr")
            beats = (np.asarray(ann.sample, dtype=np.int64), np.asarray(ann.symbol, dtype="<U2"))
    if fs is not None and not math.isclose(fs, rec.fs, rel_tol=1e-9):
        raise ValueError(f"{base.name}: its header says {rec.fs:g} Hz, not {fs:g} Hz (leave out --fs for WFDB and EDF)")
    i = _pick(list(rec.sig_name), channel, preferred, f"record {base.name}")
    stated = rec.units[i] if rec.units else ""
    if unit and stated and unit != stated:
        raise ValueError(f"{base.name}: its header says {rec.sig_name[i]} is in {stated!r}, not {unit!r} (leave out "
                         "--unit for WFDB and EDF)")
    unit = stated or unit or ""
    name = base.stem if base.suffix == ".edf" else base.name
    return Recording(name, _with_gaps(rec.p_signal[:, i], base.name, rec.sig_name[i]), float(rec.fs),
                     rec.sig_name[i], unit, beats)


def _with_gaps(x: np.ndarray, name: str, channel: str) -> np.ndarray:
    """float64[L] samples, non-finite ones (gaps) as NaN; ``ValueError`` when no sample is finite."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        raise ValueError(f"{name}: channel {channel} holds no finite sample")
    return x if finite.all() else np.where(finite, x, np.nan)


def _number_or_gap(field: str) -> float:
    """A text field as a number; an empty field is a gap (NaN)."""
    field = field.strip()
    return float(field) if field else math.nan


def _header_names(path: Path, delimiter: str | None) -> list[str] | None:
    """The column names of a text file whose first line names its columns (any field that is not a number), or None
    when the first line is data."""
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    fields = [c.strip().strip('"').strip("'") for c in first.split(delimiter)]
    try:
        [float(c) for c in fields]
    except ValueError:
        return fields
    return None


def _columns(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Channel names and float64[L] samples of each column of a .npy, .csv or .txt file (one column per channel).
    A text file's first line may name its columns (``time,ECG,resp``); otherwise they are numbered "0", "1", ...
    Empty fields and ``nan`` are gaps (NaN)."""
    names = None
    if path.suffix == ".npy":
        a = np.load(path, allow_pickle=False)
    else:
        delimiter = "," if path.suffix == ".csv" else None
        names = _header_names(path, delimiter)
        try:
            a = np.loadtxt(path, delimiter=delimiter, skiprows=int(names is not None), dtype=np.float64, ndmin=2,
                           converters=_number_or_gap, encoding="utf-8")
        except ValueError as e:
            raise ValueError(f"{path.name}: not a table of numbers ({str(e).strip().splitlines()[-1]})") from None
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{path.name}: expected samples as one column per channel, got an array of shape {a.shape}")
    if names is not None and len(names) != a.shape[1]:
        raise ValueError(f"{path.name}: its first line names {len(names)} columns, its rows have {a.shape[1]}")
    return names or [str(c) for c in range(a.shape[1])], list(a.T)


def _matlab(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """The numeric vectors (at least :data:`MIN_SAMPLES` long) of a .mat file, by variable name."""
    out = {k: np.asarray(v).ravel() for k, v in loadmat(path).items()
           if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "fiu"
           and v.size >= MIN_SAMPLES and max(v.shape) == v.size}
    if not out:
        raise ValueError(f"{path.name}: no numeric vector of at least {MIN_SAMPLES} samples")
    return list(out), list(out.values())


def read_recording(path: str | Path, *, fs: float | None = None, channel: str | None = None,
                   unit: str | None = None, preferred: tuple[str, ...] = ()) -> Recording:
    """One channel of the recording at ``path`` (:data:`FORMATS`; a WFDB record may be named with or without its
    ``.hea``/``.dat``), at its own rate: the header's for WFDB and EDF, ``fs`` Hz for the others (required there).
    Its unit: the header's for WFDB and EDF (``unit``, when given, must agree), else ``unit`` (default "": unstated).

    ``channel``: the lead, variable or column (``0``, ``1``, ...) to read, or a suffix of one; by default the
    first of ``preferred`` the file has, else its only channel. ``ValueError`` saying what is missing otherwise.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "belt.csv")
    >>> np.savetxt(p, np.c_[np.arange(100.0), -np.arange(100.0)], delimiter=",")
    >>> r = read_recording(p, fs=1000, channel="1")
    >>> r.channel, r.fs, r.signal[:3].tolist()
    ('1', 1000.0, [-0.0, -1.0, -2.0])
    """
    path = Path(path)
    if path.suffix in (".hea", ".dat") or (not path.suffix and path.with_suffix(".hea").is_file()):
        base = path.with_suffix("")
        if not base.with_suffix(".hea").is_file():
            raise ValueError(f"no WFDB header {base.with_suffix('.hea')}")
        return _wfdb(base, channel, fs, unit, preferred)
    if not path.is_file():
        raise ValueError(f"no such recording: {path}")
    if path.suffix == ".edf":
        return _wfdb(path, channel, fs, unit, preferred)
    if path.suffix not in (".mat", ".npy", ".csv", ".txt"):
        raise ValueError(f"{path.name}: unknown format; readable: {', '.join(FORMATS)}")
    if fs is None:
        raise ValueError(f"{path.name}: a {path.suffix} file does not say its sampling rate: give it with --fs")
    if not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"fs must be finite and > 0 Hz, got {fs}")
    names, cols = _matlab(path) if path.suffix == ".mat" else _columns(path)
    i = _pick(names, channel, preferred, path.name)
    return Recording(path.stem, _with_gaps(cols[i], path.name, names[i]), float(fs), names[i], unit or "")
