"""The paper's MIT-BIH beat set, rebuilt from the raw records.

Kachuee, Fazeli, Sarrafzadeh (2018), "ECG Heartbeat Classification: A Deep Transferable Representation"
published their preprocessed beats as the Kaggle "heartbeat" set (``mitbih_train.csv`` / ``mitbih_test.csv``:
187 samples + label N/S/V/F/Q). Same recipe here, vectorized per record:

1. lead MLII resampled 360 -> 125 Hz (``scipy.signal.resample_poly(x, 25, 72)``);
2. cut into consecutive 10 s segments (1250 samples; the last one shorter), each min-max normalised to [0, 1];
3. R-peaks = reference beat annotations (N/S/V/F/Q symbols, see :mod:`models.data.mitdb`), position mapped to
   125 Hz by rounding ``sample * 125 / 360``;
4. T = median RR (in samples) of the consecutive beat pairs inside the segment (the record's median RR when
   the segment has fewer than two beats);
5. each beat = ``floor(1.2 T)`` samples starting at its R-peak, cut at the end of its own segment (the paper
   works window by window), zero-padded / truncated to 187 samples.

Labels ``label`` index :data:`PAPER_CLASSES` = N, S, V, F, Q as in the Kaggle set; binary target ``y`` = 0 for
N, 1 for any other class. The four paced records are not in the shared data, so Q has only 15 beats (Kaggle:
8039).

Beats are sampled at random across all beats of all 44 records, as in the paper: the same patients appear in
train and test (inter-patient leakage), so scores on this set are optimistic; use :mod:`models.data.mitdb`
(DS1/DS2) for a patient-independent evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from models.data.mitdb import AAMI_CLASSES, ALL_RECORDS, FS, load_record, record_path
from models.data.paths import cached_arrays

PAPER_FS = 125
SEGMENT = 10 * PAPER_FS
BEAT_LEN = 187
RR_FACTOR = 1.2
PAPER_CLASSES = AAMI_CLASSES  # ("N", "S", "V", "F", "Q"), Kaggle labels 0..4
_CACHE_VERSION = 1


@dataclass(frozen=True)
class PaperBeats:
    """Random train/test draw: ``x_*`` float32[n, 187] in [0, 1] at 125 Hz starting at the R-peak, ``y_*``
    int64[n] binary (0 = N, 1 = S/V/F/Q), ``label_*`` int64[n] index into :data:`PAPER_CLASSES`, ``id_*``
    int64[n] row in :func:`paper_beat_table` (train and test ids are disjoint)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    label_train: np.ndarray
    label_test: np.ndarray
    id_train: np.ndarray
    id_test: np.ndarray


@dataclass(frozen=True)
class PaperBeatTable:
    """All beats of the records: ``x`` float32[N, 187], ``label`` int64[N] (N/S/V/F/Q), ``record`` str[N],
    ``sample`` int64[N] (R-peak at 125 Hz)."""

    x: np.ndarray
    label: np.ndarray
    record: np.ndarray
    sample: np.ndarray


def paper_record_beats(name: str, root: str | Path | None = None) -> dict[str, np.ndarray]:
    """One record's beats: ``x`` float32[n, 187], ``label`` int64[n], ``sample`` int64[n] at 125 Hz
    (cached)."""
    base = record_path(name, root)

    def build() -> dict[str, np.ndarray]:
        rec = load_record(name, root)
        sig = resample_poly(rec.signal.astype(np.float64), PAPER_FS, FS)  # 360 -> 125 Hz (25/72)
        n = sig.size
        n_seg = -(-n // SEGMENT)
        seg = np.full(n_seg * SEGMENT, np.nan)
        seg[:n] = sig
        seg = seg.reshape(n_seg, SEGMENT)
        lo, hi = np.nanmin(seg, axis=1, keepdims=True), np.nanmax(seg, axis=1, keepdims=True)
        norm = np.nan_to_num((seg - lo) / np.where(hi > lo, hi - lo, 1.0), nan=0.0).ravel()

        pos = np.clip(np.rint(rec.beat_samples * (PAPER_FS / FS)).astype(np.int64), 0, n - 1)
        seg_of = pos // SEGMENT
        # median RR per segment over consecutive pairs inside it: NaN-padded [n_seg, max pairs] matrix
        rr = np.diff(pos)
        inside = seg_of[1:] == seg_of[:-1]
        rr_seg, rr_val = seg_of[1:][inside], rr[inside].astype(np.float64)
        counts = np.bincount(rr_seg, minlength=n_seg)
        mat = np.full((n_seg, max(int(counts.max(initial=0)), 1)), np.nan)
        col = np.arange(rr_seg.size) - (np.cumsum(counts) - counts)[rr_seg]
        mat[rr_seg, col] = rr_val
        mat[counts == 0, 0] = np.median(rr) if rr.size else BEAT_LEN / RR_FACTOR
        period = np.nanmedian(mat, axis=1)[seg_of]

        length = np.minimum.reduce(
            [
                np.floor(RR_FACTOR * period).astype(np.int64),
                np.full(pos.size, BEAT_LEN),
                (seg_of + 1) * SEGMENT - pos,
            ]
        )
        idx = pos[:, None] + np.arange(BEAT_LEN)[None, :]
        take = np.arange(BEAT_LEN)[None, :] < length[:, None]
        x = np.where(take, norm[np.minimum(idx, norm.size - 1)], 0.0).astype(np.float32)
        label = np.argmax(rec.aami[:, None] == np.asarray(PAPER_CLASSES)[None, :], axis=1).astype(np.int64)
        return {"x": x, "label": label, "sample": pos}

    params = {
        "version": _CACHE_VERSION,
        "record": str(name),
        "fs": PAPER_FS,
        "len": BEAT_LEN,
        "rr": RR_FACTOR,
    }
    sources = [base.with_suffix(ext) for ext in (".hea", ".dat", ".atr")]
    return cached_arrays("paper_mitdb", params, sources, build)


def paper_beat_table(
    records: tuple[str, ...] = ALL_RECORDS, root: str | Path | None = None
) -> PaperBeatTable:
    """All beats of ``records`` (default the 44 records) concatenated in record then time order."""
    parts = [paper_record_beats(r, root) for r in records]
    record = np.concatenate(
        [np.full(p["label"].size, r, dtype="<U3") for r, p in zip(records, parts, strict=True)]
    )
    return PaperBeatTable(
        x=np.concatenate([p["x"] for p in parts]),
        label=np.concatenate([p["label"] for p in parts]).astype(np.int64),
        record=record,
        sample=np.concatenate([p["sample"] for p in parts]).astype(np.int64),
    )


def load_paper_beats(
    seed: int = 42, n_train: int = 12000, n_test: int = 2000, root: str | Path | None = None
) -> PaperBeats:
    """Draw ``n_train + n_test`` distinct beats uniformly at random (``numpy.random.default_rng(seed)``) from
    all beats of the 44 records; the first ``n_train`` are train, the rest test. Patients leak between train
    and test, as in the paper (see the module docstring). Deterministic for a given seed and data."""
    table = paper_beat_table(ALL_RECORDS, root)
    total = table.label.size
    if n_train < 0 or n_test < 0 or n_train + n_test > total:
        raise ValueError(f"n_train + n_test must be between 0 and {total} (the number of beats)")
    ids = np.random.default_rng(seed).choice(total, size=n_train + n_test, replace=False).astype(np.int64)
    tr, te = ids[:n_train], ids[n_train:]
    return PaperBeats(
        x_train=table.x[tr],
        y_train=(table.label[tr] != 0).astype(np.int64),
        x_test=table.x[te],
        y_test=(table.label[te] != 0).astype(np.int64),
        label_train=table.label[tr],
        label_test=table.label[te],
        id_train=tr,
        id_test=te,
    )
