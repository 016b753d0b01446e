"""CWRU loader on the real files in ../shared/data/cwru: names, quirks, sampling rate, leak-free splits."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import scipy.io
from data_marks import needs_data
from scipy.signal import welch

from models.data import cwru

pytestmark = needs_data("cwru")


@pytest.fixture(scope="module")
def recordings() -> list[cwru.CwruRecording]:
    return cwru.list_recordings()


@pytest.fixture(scope="module")
def frames() -> dict[str, cwru.FrameSet]:
    return {split: cwru.load_frames(split) for split in cwru.SPLITS}


def _by_name(recs, stem):
    return next(r for r in recs if r.name == stem)


def test_parse_file_names(tmp_path):
    r = cwru.parse_recording("12k_Drive_End_IR007_1_106.mat")
    assert (r.fault, r.size_inch, r.load_hp, r.file_id) == ("inner", 0.007, 1, 106)
    assert r.position is None and r.rpm is None
    r = cwru.parse_recording("cwru/12k_DE/12k_Drive_End_OR007@6_0_130.mat")
    assert (r.fault, r.size_inch, r.load_hp, r.file_id, r.position) == ("outer", 0.007, 0, 130, "6")
    r = cwru.parse_recording("12k_Drive_End_OR021@12_3_261.mat")
    assert (r.fault, r.size_inch, r.load_hp, r.position) == ("outer", 0.021, 3, "12")
    r = cwru.parse_recording("normal/normal_0_97.mat")
    assert (r.fault, r.size_inch, r.load_hp, r.file_id, r.label) == ("normal", None, 0, 97, 0)
    assert cwru.parse_recording("12k_Drive_End_B028_0_3005.mat").fault == "ball"
    with pytest.raises(ValueError, match="not a CWRU file name"):
        cwru.parse_recording("48k_Drive_End_IR007_0_109.mat")


def test_recording_inventory(recordings):
    assert len(recordings) == 61
    faults = collections.Counter(r.fault for r in recordings)
    assert faults == {"ball": 16, "inner": 16, "outer": 28, "normal": 1}
    assert set(faults) == set(cwru.CLASSES)
    per_load = collections.Counter(r.load_hp for r in recordings if r.fault != "normal")
    assert per_load == {0: 15, 1: 15, 2: 15, 3: 15}
    normal = [r for r in recordings if r.fault == "normal"]
    assert [(r.load_hp, r.file_id, r.rpm) for r in normal] == [(0, 97, 1796)]
    assert _by_name(recordings, "12k_Drive_End_IR007_1_106").rpm == 1772


def test_variable_name_quirk_of_the_0028_files(recordings):
    rec = _by_name(recordings, "12k_Drive_End_B028_0_3005")
    names = [n for n, _, _ in scipy.io.whosmat(str(rec.path))]
    assert names == ["X048_DE_time"]  # number does not match the file id, and no RPM variable
    assert rec.rpm is None and rec.size_inch == 0.028
    x = cwru.load_signal(rec)
    assert x.dtype == np.float32 and x.shape == (120801,)
    assert all(cwru.load_signal(r).size > 100_000 for r in recordings if r.size_inch == 0.028)


def _log_psd(x: np.ndarray, fs: float, grid: np.ndarray) -> np.ndarray:
    f, p = welch(x - x.mean(), fs=fs, nperseg=int(2 * fs))
    return np.log(np.interp(grid, f, p))


def test_normal_baseline_is_48khz(recordings):
    """Evidence that normal_0_97 is a 48 kHz recording (see the cwru module docstring)."""
    normal = _by_name(recordings, "normal_0_97")
    raw = scipy.io.loadmat(str(normal.path))["X097_DE_time"].ravel()
    fault_lengths = [scipy.io.whosmat(str(r.path))[0][1][0] for r in recordings if r.fault != "normal"]
    # (1) length: 243,938 samples would be 20.3 s at 12 kHz, twice any 12 kHz recording; 5.08 s at 48 kHz
    assert raw.size == 243938 and raw.size > 1.9 * max(fault_lengths)
    # (2) shaft line: at 48 kHz the strongest 20-40 Hz line is the shaft rate rpm / 60 = 29.93 Hz
    shaft = normal.rpm / 60
    for fs, expect in ((48000, shaft), (12000, None)):
        f, p = welch(raw - raw.mean(), fs=fs, nperseg=4 * fs)
        band = (f > 20) & (f < 40)
        peak = f[band][np.argmax(p[band])]
        if expect is not None:
            assert abs(peak - expect) < 0.5, peak
        else:
            assert abs(peak - shaft) > 2, peak  # read at 12 kHz the shaft line is absent from 20-40 Hz
    # (3) spectral match with the 12 kHz load-0 fault recordings only when read at 48 kHz
    grid = np.arange(10.0, 1000.0, 0.5)
    load0 = [r for r in recordings if r.load_hp == 0 and r.fault != "normal"]
    refs = [_log_psd(cwru.load_signal(r), 12000, grid) for r in load0]
    corr = {
        fs: np.mean([np.corrcoef(_log_psd(raw, fs, grid), ref)[0, 1] for ref in refs])
        for fs in (12000, 48000)
    }
    assert corr[48000] > 0.6 and corr[48000] > corr[12000] + 0.4, corr
    # load_signal resamples 48 -> 12 kHz: 60,985 samples with the shaft line still at ~29.9 Hz
    x = cwru.load_signal(normal)
    assert x.shape == (60985,) and x.dtype == np.float32
    f, p = welch(x - x.mean(), fs=cwru.FS, nperseg=4 * cwru.FS)
    band = (f > 20) & (f < 40)
    assert abs(f[band][np.argmax(p[band])] - shaft) < 0.5


def test_split_blocks_are_ordered_and_gapped():
    blocks = cwru.split_blocks(121991)
    (a0, a1), (b0, b1), (c0, c1) = blocks["train"], blocks["val"], blocks["test"]
    assert a0 == 0 and c1 == 121991
    assert b0 - a1 == cwru.FRAME and c0 - b1 == cwru.FRAME
    assert abs((a1 - a0) / 121991 - 0.6) < 0.01


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether any frame [a, a+FRAME) intersects any frame [b, b+FRAME)."""
    return bool(np.any(np.abs(a[:, None] - b[None, :]) < cwru.FRAME))


def test_time_block_split_is_leak_free(frames):
    train, val, test = frames["train"], frames["val"], frames["test"]
    for fs in (train, val, test):
        assert set(np.unique(fs.y)) == set(range(len(cwru.CLASSES)))
        assert fs.x.shape == (len(fs), cwru.FRAME) and fs.x.dtype == np.float32
        assert fs.offset.dtype == np.int64 and fs.load.dtype == np.int64
    assert set(train.recording) == set(val.recording) == set(test.recording)
    assert len(set(train.recording)) == 61
    for name in np.unique(train.recording):
        tr = train.offset[train.recording == name]
        va = val.offset[val.recording == name]
        te = test.offset[test.recording == name]
        assert not _overlaps(te, tr) and not _overlaps(va, tr) and not _overlaps(te, va), name
        assert tr.max() + 2 * cwru.FRAME <= va.min() and va.max() + 2 * cwru.FRAME <= te.min()
    assert set(np.diff(train.offset[train.recording == "12k_Drive_End_IR007_1_106"])) == {cwru.FRAME // 2}
    assert set(np.diff(test.offset[test.recording == "12k_Drive_End_IR007_1_106"])) == {cwru.FRAME}


def test_frames_are_slices_of_the_signal(frames, recordings):
    test = frames["test"]
    for stem in ("normal_0_97", "12k_Drive_End_OR007@6_0_130"):
        sig = cwru.load_signal(_by_name(recordings, stem))
        idx = np.flatnonzero(test.recording == stem)
        for i in idx[[0, -1]]:
            np.testing.assert_array_equal(test.x[i], sig[test.offset[i] : test.offset[i] + cwru.FRAME])


def test_load_filter_and_hop():
    fs = cwru.load_frames("val", loads=(1, 2))
    assert set(np.unique(fs.load)) == {1, 2}
    assert 0 not in fs.y  # normal exists at load 0 only
    dense = cwru.load_frames("test", loads=(0,), hop=256)
    assert set(np.diff(dense.offset[dense.recording == "normal_0_97"])) == {256}


def test_load_shift_protocol():
    train, val, test = cwru.load_shift_frames(train_loads=(0, 1, 2), test_load=3)
    for fs in (train, val, test):
        assert set(np.unique(fs.y)) == set(range(len(cwru.CLASSES)))
    fault = [fs.y != 0 for fs in (train, val, test)]
    assert set(np.unique(train.load[fault[0]])) == {0, 1, 2}
    assert set(np.unique(val.load[fault[1]])) == {0, 1, 2}
    assert set(np.unique(test.load[fault[2]])) == {3}
    assert not set(train.recording[fault[0]]) & set(test.recording[fault[2]])
    # normal: time-block split of the single load-0 recording, no overlap between train and test frames
    assert not _overlaps(test.offset[test.y == 0], train.offset[train.y == 0])
    assert not _overlaps(val.offset[val.y == 0], train.offset[train.y == 0])
    with pytest.raises(ValueError, match="must not be in train_loads"):
        cwru.load_shift_frames(train_loads=(0, 3), test_load=3)
