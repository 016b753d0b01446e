"""MIT-BIH Arrhythmia Database: records, AAMI beat labels, RR features and 256-sample beat windows.

Protocol: inter-patient split of de Chazal et al. (2004), DS1 = train, DS2 = test, paced records excluded.
Validation (temperature, thresholds) comes from DS1 only: :data:`VAL_RECORDS` is a fixed record-level hold-out
of DS1 (see :func:`split_validation`); DS2 is never used for any choice.

Beats are annotated by cardiologists (``.atr``); only beat annotations are used, mapped to AAMI EC57 classes
N = {N, L, R, e, j}, S = {A, a, J, S}, V = {V, E}, F = {F}, Q = {/, f, Q}. Rhythm, noise and other non-beat
annotations (``+ ~ | x ! [ ] "`` ...) are ignored. Classifiers use the four classes :data:`CLASSES`; Q beats
(15 in the 44 records) are kept in :class:`EcgRecord` (they are real beats, so they count for RR intervals)
but left out of :class:`BeatSet`.

Window: ``BEFORE + AFTER = 256`` samples of lead MLII in mV at ``FS = 360`` Hz, centred with the beat's R fiducial
(:func:`models.data.fiducial.r_fiducial` of the annotated sample, the point live windows are centred on too) at
index ``BEFORE = 96``; RR features are intervals between those fiducials.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.data.fiducial import r_fiducial
from models.data.morph import MORPH_FEATURES, morph_features, running_template
from models.data.paths import DataNotFoundError, cached_arrays, dataset_dir
from models.data.rr import RR_FEATURES, rr_features

# wfdb 4.3 calls DataFrame.set_index(inplace=True), deprecated in pandas: silence it at import and read time
_WFDB_NOISE = {"message": ".*inplace keyword.*", "module": "wfdb"}
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", **_WFDB_NOISE)
    import wfdb

FS = 360
BEFORE = 96
AFTER = 160
WINDOW = BEFORE + AFTER
BEAT_AUX = len(RR_FEATURES) + len(MORPH_FEATURES) + WINDOW  # len(features["beat"])
CLASSES = ("N", "S", "V", "F")
# the per-beat side features of the ECG contract (features["beat"]): per-stream RR, template morphology, then the
# stream's running template (WINDOW samples, models.data.morph.running_template)
BEAT_FEATURES = RR_FEATURES + MORPH_FEATURES
AAMI_CLASSES = ("N", "S", "V", "F", "Q")
LEAD = "MLII"

DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
       "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230")  # fmt: skip
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
       "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234")  # fmt: skip
ALL_RECORDS = tuple(sorted(DS1 + DS2))
PACED_RECORDS = ("102", "104", "107", "217")

# Record-level validation hold-out of DS1, fixed so every run and every model sees the same split. Chosen so
# each of N/S/V/F appears on both sides. Annotation counts N/S/V/F: 116 2302/1/109/0, 124 1536/31/47/5,
# 205 2571/3/71/11, 220 1954/94/0/0, 223 2045/73/473/14 -> validation N 10408, S 202, V 700, F 30 (~22 %,
# 21 %, 18 %, 7 % of DS1); train keeps 208 (373 of the 415 DS1 F beats) and 209 (383 S beats).
VAL_RECORDS = ("116", "124", "205", "220", "223")
TRAIN_RECORDS = tuple(r for r in DS1 if r not in VAL_RECORDS)
# Record groups of DS1 held out one at a time by the models that judge it without DS2: the validation records, then
# two groups that spread DS1's supraventricular (209, 118, 201, 207) and ventricular records; the records in no
# group (109 112 115 119 122 208: 373 of the 415 DS1 F beats are in 208) are always trained on. Used by the recipe's
# record-grouped cross-validation (``models.selection``) and by the cross-fitted models whose held-out beats join the
# risk rule's evidence (``models.recipes``).
DS1_GROUPS: tuple[tuple[str, ...], ...] = (
    VAL_RECORDS,
    ("106", "118", "209", "215", "230"),
    ("101", "108", "114", "201", "203", "207"),
)

SYMBOL_TO_AAMI = {
    **dict.fromkeys("NLRej", "N"),
    **dict.fromkeys("AaJS", "S"),
    **dict.fromkeys("VE", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}

_CACHE_VERSION = 8
_SYM_KEYS = np.asarray(sorted(SYMBOL_TO_AAMI), dtype="<U1")
_SYM_AAMI = np.asarray([SYMBOL_TO_AAMI[k] for k in _SYM_KEYS], dtype="<U1")


@dataclass(frozen=True)
class EcgRecord:
    """One record: ``signal`` float32[L] of lead ``lead`` (MLII when the record has it) in mV at ``fs`` Hz; beat
    annotations (all AAMI classes incl. Q): ``beat_samples`` int64[n] (R-peak sample index), ``beat_symbols``
    str[n] (MIT-BIH symbol), ``aami`` str[n]."""

    name: str
    signal: np.ndarray
    fs: int
    beat_samples: np.ndarray
    beat_symbols: np.ndarray
    aami: np.ndarray
    lead: str = LEAD


@dataclass(frozen=True)
class BeatSet:
    """Beats of classes N/S/V/F: ``x`` float32[N, 256] MLII mV (R fiducial at index 96), ``rr`` float32[N, 9]
    (:data:`models.data.rr.RR_FEATURES`, normalised by the record's own causal running average RR), ``morph``
    float32[N, 3] (:data:`models.data.morph.MORPH_FEATURES`, against the record's causal running template), ``y``
    int64[N] index into :data:`CLASSES`, ``record`` str[N], ``sample`` int64[N] (the annotated R-peak sample at 360
    Hz in its record; the window is centred on its R fiducial, a sample or two away, some 50 ms on wide ventricular
    beats), ``template`` float32[N, 256] (the record's causal running template, :func:`running_template`).
    ``aux`` = the side features of the ECG contract, float32[N, :data:`BEAT_AUX`] (rr, morph, template)."""

    x: np.ndarray
    rr: np.ndarray
    morph: np.ndarray
    template: np.ndarray
    y: np.ndarray
    record: np.ndarray
    sample: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def aux(self) -> np.ndarray:
        return np.concatenate((self.rr, self.morph, self.template), axis=1)

    def subset(self, index: np.ndarray) -> BeatSet:
        """Rows selected by a boolean mask or an integer index array."""
        return BeatSet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def counts(self) -> dict[str, int]:
        """Number of beats per class name."""
        return dict(zip(CLASSES, np.bincount(self.y, minlength=len(CLASSES)).tolist(), strict=True))

    @staticmethod
    def concat(parts: Sequence[BeatSet]) -> BeatSet:
        return BeatSet(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(BeatSet)}
        )


def record_path(name: str | int, root: str | Path | None = None) -> Path:
    """Path of record `name` without extension; raises DataNotFoundError if its .hea/.dat/.atr are missing."""
    base = dataset_dir("mitdb", root) / str(name)
    missing = [ext for ext in (".hea", ".dat", ".atr") if not base.with_suffix(ext).is_file()]
    if missing:
        raise DataNotFoundError(
            f"MIT-BIH record {name} incomplete in {base.parent} (missing {', '.join(missing)}); "
            "run `sci-monitor data fetch mitdb` or set SCI_DATA_DIR"
        )
    return base


def _beat_annotations(base: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_WFDB_NOISE)
        ann = wfdb.rdann(str(base), "atr")
    symbols = np.asarray(ann.symbol, dtype="<U2")
    is_beat = np.isin(symbols, list(SYMBOL_TO_AAMI))
    symbols = symbols[is_beat].astype("<U1")
    samples = np.asarray(ann.sample, dtype=np.int64)[is_beat]
    aami = _SYM_AAMI[np.searchsorted(_SYM_KEYS, symbols)] if symbols.size else symbols
    return samples, symbols, aami


def load_record(name: str | int, root: str | Path | None = None, lead: str | None = LEAD) -> EcgRecord:
    """Read record ``name`` (e.g. ``"114"``), lead ``lead`` located by name (MLII is channel 1 in record 114).

    ``lead=None``: MLII when the record has it, else its first lead (a live stream carries whatever lead it has;
    the lead name is kept in :attr:`EcgRecord.lead`). Raises ``ValueError`` when a named lead is missing.
    """
    base = record_path(name, root)
    rec = wfdb.rdrecord(str(base))
    if lead is None:
        lead = LEAD if LEAD in rec.sig_name else rec.sig_name[0]
    if lead not in rec.sig_name:
        raise ValueError(f"record {name} has no {lead} lead (leads: {rec.sig_name})")
    if rec.fs != FS:
        raise ValueError(f"record {name} is sampled at {rec.fs} Hz, expected {FS}")
    signal = rec.p_signal[:, rec.sig_name.index(lead)].astype(np.float32)
    samples, symbols, aami = _beat_annotations(base)
    return EcgRecord(str(name), signal, FS, samples, symbols, aami, lead)


def class_counts(records: Iterable[str | int], root: str | Path | None = None) -> dict[str, int]:
    """Annotation counts of the five AAMI classes N/S/V/F/Q over ``records`` (annotations only, no
    windowing)."""
    aami = np.concatenate([_beat_annotations(record_path(r, root))[2] for r in records])
    return {c: int(np.count_nonzero(aami == c)) for c in AAMI_CLASSES}


def beat_windows(
    signal: np.ndarray, peaks: np.ndarray, before: int = BEFORE, after: int = AFTER
) -> tuple[np.ndarray, np.ndarray]:
    """Windows float32[m, before+after] with the R-peak at index ``before``, and kept_mask bool[n].

    Beats whose window would cross the record start or end are dropped (``kept_mask`` False);
    ``m = kept_mask.sum()``.
    """
    sig = np.asarray(signal, dtype=np.float32).ravel()
    p = np.asarray(peaks, dtype=np.int64).ravel()
    kept = (p - before >= 0) & (p + after <= sig.size)
    if sig.size < before + after:
        return np.empty((0, before + after), np.float32), np.zeros(p.size, bool)
    windows = sliding_window_view(sig, before + after)[p[kept] - before]
    return np.ascontiguousarray(windows, dtype=np.float32), kept


def _record_beats(name: str, root: str | Path | None, before: int, after: int) -> dict[str, np.ndarray]:
    base = record_path(name, root)

    def build() -> dict[str, np.ndarray]:
        rec = load_record(name, root)
        # windows centred on the R fiducial of each annotated beat, as live windows are on the detected beat's
        r = r_fiducial(rec.signal, rec.beat_samples, rec.fs)
        # over all beats (Q included): RR and the running template are properties of the stream
        rr = rr_features(r, rec.fs)
        x, kept = beat_windows(rec.signal, r, before, after)
        morph, template = morph_features(x), running_template(x)
        aami = rec.aami[kept]
        keep4 = aami != "Q"
        y = _class_index(aami[keep4])
        return {"x": x[keep4], "rr": rr[kept][keep4], "morph": morph[keep4], "template": template[keep4], "y": y,
                "sample": rec.beat_samples[kept][keep4]}

    params = {"version": _CACHE_VERSION, "record": str(name), "before": before, "after": after, "fs": FS}
    sources = [base.with_suffix(ext) for ext in (".hea", ".dat", ".atr")]
    return cached_arrays("mitdb_beats", params, sources, build)


def _class_index(labels: np.ndarray) -> np.ndarray:
    """int64[n] index of each label in CLASSES (labels must all be in CLASSES)."""
    return np.argmax(np.asarray(labels)[:, None] == np.asarray(CLASSES)[None, :], axis=1).astype(np.int64)


def load_beats(
    records: Iterable[str | int] = DS1,
    root: str | Path | None = None,
    before: int = BEFORE,
    after: int = AFTER,
) -> BeatSet:
    """All N/S/V/F beats of ``records`` (record order, then time order); each record is cached in
    ``cache_dir()``."""
    parts = []
    for name in map(str, records):
        a = _record_beats(name, root, before, after)
        record = np.full(a["y"].shape[0], name, dtype="<U3")
        parts.append(BeatSet(a["x"], a["rr"], a["morph"], a["template"], a["y"].astype(np.int64), record,
                             a["sample"].astype(np.int64)))
    if not parts:
        raise ValueError("no records given")
    return BeatSet.concat(parts)


def split_validation(
    data: BeatSet | Sequence[str | int], val_records: Sequence[str] = VAL_RECORDS
) -> tuple[BeatSet, BeatSet] | tuple[tuple[str, ...], tuple[str, ...]]:
    """Record-level DS1 validation split: ``(train, val)`` BeatSets, or ``(train, val)`` record-name tuples.

    Validation = the records of ``data`` that are in ``val_records`` (default :data:`VAL_RECORDS`);
    deterministic. Raises ``ValueError`` if ``data`` contains a DS2 record: thresholds and temperature are
    never fitted on DS2.
    """
    val_set = {str(r) for r in val_records}
    is_beats = isinstance(data, BeatSet)
    names = np.unique(data.record).tolist() if is_beats else [str(r) for r in data]
    leaked = sorted(set(names) & set(DS2))
    if leaked:
        raise ValueError(f"validation must come from DS1 only; DS2 records given: {leaked}")
    if is_beats:
        is_val = np.isin(data.record, sorted(val_set))
        return data.subset(~is_val), data.subset(is_val)
    return tuple(r for r in names if r not in val_set), tuple(r for r in names if r in val_set)
