"""CWRU bearing vibration: recordings, 1024-sample frames at 12 kHz and leakage-free splits.

Classes :data:`CLASSES` = normal, ball, inner, outer: the fault location on the drive-end bearing; fault
size (0.007-0.028 inch), outer-race clock position (@3, @6, @12) and motor load (0-3 hp) are nuisance factors
spread over every fault class. The shared data holds 60 drive-end fault recordings at 12 kHz (ball 16,
inner 16, outer 28; ~10 s each) and one normal baseline (file 97, load 0 only), so normal is the rarest
class (~5 s, about 1 % of the frames): weight classes when training.

Sampling rate of the normal baseline: ``normal_0_97.mat`` is recorded at 48 kHz, not 12 kHz. Evidence
(checked in ``tests/test_data_cwru.py``):
(1) length 243,938 samples = 5.08 s at 48 kHz; at 12 kHz it would last 20.3 s, twice as long as any 12 kHz
    fault file (120,801-122,917 samples, ~10.1 s);
(2) read at 48 kHz its strongest line between 20 and 40 Hz is at 30.0 Hz, the shaft rate 1796 rpm / 60 =
    29.93 Hz (read at 12 kHz that line would sit at 7.5 Hz);
(3) its log power spectrum (10-1000 Hz) correlates with those of the load-0 fault recordings at r = 0.76
    when read at 48 kHz, against 0.03 at 12 kHz: their common lines (148, 162, 192 Hz) only line up at
    48 kHz.
:func:`load_signal` therefore resamples it 48 -> 12 kHz with ``scipy.signal.resample_poly(x, 1, 4)``
(60,985 samples).

Split, leakage-free: every recording is cut in time into contiguous blocks train / val / test =
:data:`SPLIT_FRACTIONS` (60/20/20 %) of its length, separated by gaps of ``FRAME`` samples that belong to no
block. Frames of ``FRAME`` samples are taken only inside a block (hop ``FRAME // 2`` in train, ``FRAME`` in
val/test by default), so no test or val frame shares a sample with a training frame, and consecutive blocks
are at least ``FRAME`` samples apart. Every recording contributes to every split, so each split covers all
classes, sizes and loads.

Load shift (:func:`load_shift_frames`): train/val on the fault recordings of ``train_loads`` (their train/val
blocks), test on the fault recordings of ``test_load`` (whole recordings, never seen in training). The only
normal recording is at load 0, so normal frames follow the time-block split in every split (train block ->
train, val -> val, test -> test): for the normal class the test is a same-load, later-in-time test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
from numpy.lib.stride_tricks import sliding_window_view

from models.data.paths import DataNotFoundError, dataset_dir
from models.data.recording import resample

FS = 12000
FRAME = 1024
CLASSES = ("normal", "ball", "inner", "outer")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
LOADS = (0, 1, 2, 3)
NORMAL_NATIVE_FS = 48000  # normal baseline files (97-100) are 48 kHz recordings; see module docstring
FAULT_CODES = {"B": "ball", "IR": "inner", "OR": "outer"}

_FAULT_NAME = re.compile(
    r"^12k_Drive_End_(?P<code>B|IR|OR)(?P<size>\d{3})(?:@(?P<pos>\d+))?_(?P<load>\d)_(?P<id>\d+)$"
)
_NORMAL_NAME = re.compile(r"^normal_(?P<load>\d)_(?P<id>\d+)$")


@dataclass(frozen=True)
class CwruRecording:
    """One ``.mat`` file: ``fault`` in :data:`CLASSES`, ``size_inch`` (None for normal), ``load_hp`` 0-3,
    publisher ``file_id`` (from the file name), ``rpm`` from the ``*RPM`` variable (None when absent, as in
    the 0.028" files), ``position`` outer-race clock position "3"/"6"/"12" (None otherwise)."""

    path: Path
    fault: str
    size_inch: float | None
    load_hp: int
    file_id: int
    rpm: int | None = None
    position: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def label(self) -> int:
        return CLASSES.index(self.fault)

    @property
    def native_fs(self) -> int:
        return NORMAL_NATIVE_FS if self.fault == "normal" else FS


@dataclass(frozen=True)
class FrameSet:
    """Frames ``x`` float32[N, FRAME] (drive-end acceleration in g at 12 kHz), ``y`` int64[N] index into
    :data:`CLASSES`, ``recording`` str[N] (file stem), ``offset`` int64[N] first sample of the frame in its
    recording (12 kHz), ``load`` int64[N] motor load in hp."""

    x: np.ndarray
    y: np.ndarray
    recording: np.ndarray
    offset: np.ndarray
    load: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: np.ndarray) -> FrameSet:
        return FrameSet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def counts(self) -> dict[str, int]:
        return dict(zip(CLASSES, np.bincount(self.y, minlength=len(CLASSES)).tolist(), strict=True))

    @staticmethod
    def concat(parts: Sequence[FrameSet]) -> FrameSet:
        if not parts:
            empty = np.empty(0, np.int64)
            return FrameSet(np.empty((0, FRAME), np.float32), empty, np.empty(0, "<U32"), empty, empty)
        return FrameSet(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(FrameSet)}
        )


class FrameSplits(NamedTuple):
    train: FrameSet
    val: FrameSet
    test: FrameSet


def parse_recording(path: str | Path, rpm: int | None = None) -> CwruRecording:
    """Parse a publisher file name, e.g. ``12k_Drive_End_OR007@6_0_130.mat`` (outer race, 0.007", @6, load 0,
    file 130) or ``normal_0_97.mat``. ``rpm`` is not in the name; :func:`list_recordings` reads it from the
    file."""
    path = Path(path)
    if m := _FAULT_NAME.match(path.stem):
        fault, size = FAULT_CODES[m["code"]], int(m["size"]) / 1000
        return CwruRecording(path, fault, size, int(m["load"]), int(m["id"]), rpm, m["pos"])
    if m := _NORMAL_NAME.match(path.stem):
        return CwruRecording(path, "normal", None, int(m["load"]), int(m["id"]), rpm, None)
    raise ValueError(f"not a CWRU file name: {path.name} (expected e.g. 12k_Drive_End_IR007_1_106.mat)")


def _variable(path: Path, suffix: str) -> str | None:
    names = [name for name, _, _ in scipy.io.whosmat(str(path)) if name.endswith(suffix)]
    if len(names) > 1:
        raise ValueError(f"{path.name}: several variables end with {suffix}: {names}")
    return names[0] if names else None


def read_rpm(path: str | Path) -> int | None:
    """Shaft speed from the ``X<nnn>RPM`` variable, None if the file has none (0.028" files)."""
    var = _variable(Path(path), "RPM")
    if var is None:
        return None
    return int(np.asarray(scipy.io.loadmat(str(path), variable_names=[var])[var]).ravel()[0])


def list_recordings(root: str | Path | None = None, read_rpms: bool = True) -> list[CwruRecording]:
    """All recordings under ``<data>/cwru`` (``12k_DE/*.mat`` and ``normal/*.mat``), sorted by class, size,
    position, load. RPMs are read from the files unless ``read_rpms`` is False."""
    base = dataset_dir("cwru", root)
    paths = sorted(base.glob("12k_DE/*.mat")) + sorted(base.glob("normal/*.mat"))
    if not paths:
        raise DataNotFoundError(
            f"no .mat files under {base}/12k_DE or {base}/normal; run `sci-monitor data fetch cwru`"
        )
    recs = [parse_recording(p, read_rpm(p) if read_rpms else None) for p in paths]
    return sorted(
        recs, key=lambda r: (r.label, r.size_inch or 0.0, int(r.position or 0), r.load_hp, r.file_id)
    )


def load_signal(rec: CwruRecording) -> np.ndarray:
    """Drive-end acceleration float32[L] in g at 12 kHz.

    Reads the one variable ending in ``_DE_time`` whatever its number (the 0.028" files hold e.g.
    ``X048_DE_time`` in file 3005); 48 kHz normal baselines are resampled to 12 kHz
    (:func:`models.data.recording.resample`, i.e. ``resample_poly(x, 1, 4)``).
    """
    var = _variable(rec.path, "_DE_time")
    if var is None:
        raise ValueError(f"{rec.path}: no drive-end variable (*_DE_time)")
    x = np.asarray(scipy.io.loadmat(str(rec.path), variable_names=[var])[var], dtype=np.float64).ravel()
    return resample(x, rec.native_fs, FS)


def split_blocks(
    length: int, fractions: Sequence[float] = SPLIT_FRACTIONS, gap: int = FRAME
) -> dict[str, tuple]:
    """Contiguous ``[start, stop)`` sample blocks per split of a recording of ``length`` samples.

    Block i starts at ``round(cum_fraction[i-1] * length) + gap`` (the first at 0) and stops at
    ``round(cum_fraction[i] * length)``: the ``gap`` samples in front of the val and test blocks belong to no
    split.
    """
    edges = np.rint(np.cumsum((0.0, *fractions)) / sum(fractions) * length).astype(np.int64)
    return {split: (int(edges[i]) + (gap if i else 0), int(edges[i + 1])) for i, split in enumerate(SPLITS)}


def frame_starts(start: int, stop: int, hop: int) -> np.ndarray:
    """int64 first samples of the FRAME-long frames that fit entirely in ``[start, stop)``."""
    return np.arange(start, stop - FRAME + 1, hop, dtype=np.int64)


def _frames(rec: CwruRecording, signal: np.ndarray, starts: np.ndarray) -> FrameSet:
    x = sliding_window_view(signal, FRAME)[starts] if starts.size else np.empty((0, FRAME), np.float32)
    n = starts.size
    return FrameSet(
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=np.full(n, rec.label, np.int64),
        recording=np.full(n, rec.name, dtype="<U32"),
        offset=starts,
        load=np.full(n, rec.load_hp, np.int64),
    )


def _default_hop(split: str) -> int:
    return FRAME // 2 if split == "train" else FRAME


def load_frames(
    split: str, loads: Sequence[int] = LOADS, hop: int | None = None, root: str | Path | None = None
) -> FrameSet:
    """Frames of one time-block ``split`` ("train", "val" or "test") of every recording whose load is in
    ``loads``.

    ``hop`` defaults to ``FRAME // 2`` in train and ``FRAME`` in val/test. The normal recording exists at load
    0 only: ``loads`` without 0 gives no normal frames.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    hop = hop or _default_hop(split)
    parts = []
    for rec in list_recordings(root, read_rpms=False):
        if rec.load_hp in loads:
            sig = load_signal(rec)
            parts.append(_frames(rec, sig, frame_starts(*split_blocks(sig.size)[split], hop)))
    return FrameSet.concat(parts)


def load_shift_frames(
    train_loads: Sequence[int] = (0, 1, 2),
    test_load: int = 3,
    hop: int | None = None,
    root: str | Path | None = None,
) -> FrameSplits:
    """Load-shift protocol: ``(train, val, test)`` FrameSets.

    Fault classes: train / val = the train / val time blocks of the recordings at ``train_loads``; test =
    whole recordings at ``test_load`` (hop FRAME). Normal (load 0 only): time-block split in all three (see
    module docstring). ``hop`` sets the train hop (default ``FRAME // 2``); val and test use ``FRAME``.
    """
    if test_load in train_loads:
        raise ValueError(f"test_load {test_load} must not be in train_loads {tuple(train_loads)}")
    out: dict[str, list[FrameSet]] = {s: [] for s in SPLITS}
    for rec in list_recordings(root, read_rpms=False):
        is_normal = rec.fault == "normal"
        if not is_normal and rec.load_hp not in (*train_loads, test_load):
            continue
        sig = load_signal(rec)
        blocks = split_blocks(sig.size)
        if is_normal or rec.load_hp in train_loads:
            out["train"].append(
                _frames(rec, sig, frame_starts(*blocks["train"], hop or _default_hop("train")))
            )
            out["val"].append(_frames(rec, sig, frame_starts(*blocks["val"], FRAME)))
        if is_normal:
            out["test"].append(_frames(rec, sig, frame_starts(*blocks["test"], FRAME)))
        elif rec.load_hp == test_load:
            out["test"].append(_frames(rec, sig, frame_starts(0, sig.size, FRAME)))
    return FrameSplits(*(FrameSet.concat(out[s]) for s in SPLITS))
