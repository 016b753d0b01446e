"""A user's own recordings: reading files of any format and rate, resampling, and streaming them as windows."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import scipy.io
from data_marks import needs_data
from scipy.signal import resample_poly

from models.data import cwru, mitdb
from models.data.recording import finite_runs, read_recording, resample, to_unit
from streams.contracts import decode_window, encode_window
from streams.replay import ecg_file_windows, ecg_windows, file_stream, vibration_file_windows, vibration_windows

START_NS = 1_700_000_000_000_000_000
MINUTES = 5


# ------------------------------------------------------------------------------------------------------------
# reading and resampling


def test_resample_matches_scipy_and_keeps_a_tone() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2570)
    # 257 Hz (INCART) -> 360 Hz: the exact ratio 360/257, as scipy computes it
    assert np.allclose(resample(x, 257, 360), resample_poly(x, 360, 257), atol=1e-6)
    assert resample(x, 257, 360).dtype == np.float32 and resample(x, 257, 360).size == 3600
    t = np.arange(1280) / 128.0
    y = resample(np.sin(2 * np.pi * 10 * t), 128, 360)  # a 10 Hz tone from a 128 Hz source
    ref = np.sin(2 * np.pi * 10 * np.arange(y.size) / 360.0)
    assert np.abs(y - ref)[100:-100].max() < 0.01
    assert np.array_equal(resample(x, 360, 360), x.astype(np.float32))
    with pytest.raises(ValueError, match="finite and > 0"):
        resample(x, 0, 360)


def test_units_are_converted_or_refused() -> None:
    assert to_unit(np.array([1000.0]), "uV", "mV").tolist() == [1.0]
    assert to_unit(np.array([2.0]), "V", "mV").tolist() == [2000.0]
    assert np.isclose(to_unit(np.array([9.80665]), "m/s^2", "g")[0], 1.0)
    with pytest.raises(ValueError, match="cannot convert 'mmHg' to 'mV'"):
        to_unit(np.ones(2), "mmHg", "mV")


def test_files_of_each_format_and_their_channels(tmp_path) -> None:
    sig = np.linspace(-1, 1, 400)
    np.save(tmp_path / "one.npy", sig)
    np.savetxt(tmp_path / "two.csv", np.c_[sig, 2 * sig], delimiter=",")
    np.savetxt(tmp_path / "two.txt", np.c_[sig, 2 * sig])
    # a CWRU-style file: a drive-end and a fan-end vector, and a scalar RPM that is metadata, not a channel
    scipy.io.savemat(tmp_path / "bearing.mat", {"X200_DE_time": sig[:, None], "X200_FE_time": -sig[:, None],
                                                "X200RPM": np.array([[1772.0]])})
    r = read_recording(tmp_path / "one.npy", fs=500)
    assert (r.name, r.channel, r.fs, r.unit) == ("one", "0", 500.0, "") and np.allclose(r.signal, sig)
    for name in ("two.csv", "two.txt"):
        assert np.allclose(read_recording(tmp_path / name, fs=500, channel="1").signal, 2 * sig, atol=1e-6)
        with pytest.raises(ValueError, match=r"2 channels .* choose one with --channel"):
            read_recording(tmp_path / name, fs=500)
    m = read_recording(tmp_path / "bearing.mat", fs=48000, preferred=("DE_time",))
    assert m.channel == "X200_DE_time" and np.allclose(m.signal, sig)
    assert read_recording(tmp_path / "bearing.mat", fs=48000, channel="FE_time").channel == "X200_FE_time"
    with pytest.raises(ValueError, match="no channel 'BA_time'"):
        read_recording(tmp_path / "bearing.mat", fs=48000, channel="BA_time")
    with pytest.raises(ValueError, match="does not say its sampling rate: give it with --fs"):
        read_recording(tmp_path / "one.npy")
    with pytest.raises(ValueError, match="no such recording"):
        read_recording(tmp_path / "missing.npy", fs=1)
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown format"):
        read_recording(tmp_path / "notes.json", fs=1)
    # gaps (NaN, infinite samples) are kept as NaN for the replay to stream around; a channel of nothing is refused
    np.save(tmp_path / "gap.npy", np.r_[sig, np.nan, np.inf, sig])
    gap = read_recording(tmp_path / "gap.npy", fs=500).signal
    assert np.isnan(gap[400:402]).all() and np.array_equal(gap[402:], sig)
    # a text file whose first line names its columns (as exports do), with an empty field: named channels, a gap
    rows = [f"{i / 500:.3f},{'' if i == 1 else f'{v:.6f}'},{-v:.6f}\n" for i, v in enumerate(sig)]
    (tmp_path / "export.csv").write_text("time_s,ECG,resp\n" + "".join(rows))
    ecg = read_recording(tmp_path / "export.csv", fs=500, channel="ECG")
    assert ecg.channel == "ECG" and np.flatnonzero(np.isnan(ecg.signal)).tolist() == [1]
    assert np.allclose(np.delete(ecg.signal, 1), np.delete(sig, 1), atol=1e-6)
    assert read_recording(tmp_path / "export.csv", fs=500, channel="resp").channel == "resp"
    (tmp_path / "bad.csv").write_text("1.0,2.0\n3.0,oops\n")
    with pytest.raises(ValueError, match=r"bad\.csv: not a table of numbers"):
        read_recording(tmp_path / "bad.csv", fs=500, channel="1")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2,3\n")
    with pytest.raises(ValueError, match="first line names 2 columns, its rows have 3"):
        read_recording(tmp_path / "ragged.csv", fs=500, channel="a")
    np.save(tmp_path / "none.npy", np.full(100, np.nan))
    with pytest.raises(ValueError, match="no finite sample"):
        read_recording(tmp_path / "none.npy", fs=500)


def test_a_file_that_does_not_state_its_unit_is_read_in_the_unit_given(tmp_path) -> None:
    np.save(tmp_path / "mg.npy", np.full(4096, 250.0))  # a 0.25 g offset, written in mg
    assert read_recording(tmp_path / "mg.npy", fs=12000).unit == ""  # unstated: the modality's unit is assumed
    assert read_recording(tmp_path / "mg.npy", fs=12000, unit="mg").unit == "mg"
    frames = list(vibration_file_windows(tmp_path / "mg.npy", fs=12000, unit="mg", start_ns=START_NS))
    assert len(frames) == 4 and all(np.allclose(w.samples, 0.25) for w in frames)
    assert np.allclose(next(iter(vibration_file_windows(tmp_path / "mg.npy", fs=12000))).samples, 250.0)
    with pytest.raises(ValueError, match="cannot convert 'mmHg' to 'mV'"):
        ecg_file_windows(tmp_path / "mg.npy", fs=360, unit="mmHg")  # refused when called, before any window


def test_stream_names_are_valid_for_the_contract() -> None:
    assert file_stream("ecg", "/x/I01.hea") == "ecg-I01"
    assert file_stream("ecg", "/x/I01") == "ecg-I01"
    assert len(file_stream("vibration", "a" * 300 + ".npy")) == 128


# ------------------------------------------------------------------------------------------------------------
# a foreign ECG source: record 100's first minutes written as another device would, 250 Hz in µV, with annotations


@functools.cache
def _foreign_100(root: str, fs: int, gap_s: tuple[float, float] | None = None) -> str:
    """Record 100's first minutes as a ``fs`` Hz device in µV writes them (WFDB format 16, lead "II", with its
    annotations); ``gap_s``: (start, end) seconds of the recording lost (stored as WFDB invalid samples)."""
    import warnings

    import wfdb

    warnings.filterwarnings("ignore", message=".*inplace keyword.*", module="wfdb")  # wfdb 4.3 with pandas >= 2
    rec = mitdb.load_record("100")
    n = MINUTES * 60 * mitdb.FS
    sig = resample(rec.signal[:n], mitdb.FS, fs)
    keep = rec.beat_samples < n
    at = np.rint(rec.beat_samples[keep] * fs / mitdb.FS).astype(np.int64)
    name = f"dev{fs}"
    uv = (sig * 1000.0).astype(np.float64)
    if gap_s is not None:
        uv[round(gap_s[0] * fs) : round(gap_s[1] * fs)] = np.nan
        name += "gap"
    wfdb.wrsamp(name, fs=fs, units=["uV"], sig_name=["II"], p_signal=uv[:, None], fmt=["16"], write_dir=root)
    wfdb.wrann(name, "atr", at, list(rec.beat_symbols[keep]), write_dir=root)
    return f"{root}/{name}"


@functools.cache
def _original_100() -> tuple:
    n = MINUTES * 60 * mitdb.FS
    return tuple(itertools.takewhile(lambda w: int(w.meta["sample"]) < n - mitdb.AFTER,
                                     ecg_windows("100", start_ns=START_NS)))


def _same_beats(a, b, tol: int = 2) -> list[tuple[int, int]]:
    """Pairs (i, j) of windows a[i], b[j] of the same beat: detected peaks within ``tol`` samples."""
    where = {int(w.meta["sample"]): i for i, w in enumerate(a)}
    pairs = []
    for j, w in enumerate(b):
        p = int(w.meta["sample"])
        i = next((where[p + d] for d in sorted(range(-tol, tol + 1), key=abs) if p + d in where), None)
        if i is not None:
            pairs.append((i, j))
    return pairs


@needs_data("mitdb")
@pytest.mark.parametrize("fs", [250, 128])
def test_a_foreign_ecg_source_streams_the_same_beats(tmp_path_factory, fs: int) -> None:
    path = _foreign_100(str(tmp_path_factory.mktemp(f"dev{fs}")), fs)
    with pytest.raises(ValueError, match="header says"):
        ecg_file_windows(path + ".hea", fs=360)
    with pytest.raises(ValueError, match=r"header says II is in 'uV', not 'mV' \(leave out --unit"):
        ecg_file_windows(path + ".hea", unit="mV")
    assert read_recording(path + ".hea", unit="uV").unit == "uV"  # agreeing with the header is fine
    windows = list(ecg_file_windows(path + ".hea", start_ns=START_NS))
    original = _original_100()
    w0 = windows[0]
    assert (w0.stream, w0.lead, w0.fs, w0.samples.shape) == (f"ecg-dev{fs}", "II", 360.0, (256,))
    assert w0.meta["source_fs"] == str(fs) and w0.meta["file"] == f"dev{fs}.hea"
    assert decode_window(encode_window(w0)) == w0
    # the beats of the 360 Hz stream are found at the same sample (±2 samples = 5.6 ms: a 128 Hz source has lost
    # the R wave's content above 64 Hz, so its refined peak may move a little), with the same label
    found = _same_beats(windows, original)
    assert len(found) >= 0.99 * len(original), len(found)
    assert sum(windows[i].label == original[j].label for i, j in found) >= 0.99 * len(original)
    assert abs(len(windows) - len(original)) <= 0.01 * len(original)
    # the signal is in mV again (the file holds µV): the R waves of record 100 are about 1-2 mV high
    assert 0.5 < np.median([np.ptp(w.samples) for w in windows]) < 3.0


@needs_data("mitdb")
def test_a_recording_with_a_gap_streams_both_sides_of_it(tmp_path_factory) -> None:
    """A gap (invalid samples, as WFDB stores a lost stretch) neither aborts the replay nor reaches a window: each
    part is streamed as the start of a recording is, in the same stream, at its own time."""
    fs, gap = 250, (100.0, 110.0)
    path = _foreign_100(str(tmp_path_factory.mktemp("gap")), fs, gap)
    rec = read_recording(path + ".hea")
    assert [(r.start, r.stop) for r in finite_runs(rec.signal)] == [(0, 25_000), (27_500, MINUTES * 60 * fs)]
    windows = list(ecg_file_windows(path + ".hea", start_ns=START_NS))
    assert [w.seq for w in windows] == list(range(len(windows)))
    assert {w.stream for w in windows} == {"ecg-dev250gap"}
    assert all(np.isfinite(w.samples).all() and np.isfinite(w.features["beat"]).all() for w in windows)
    parts = [[w for w in windows if w.meta["segment"] == k] for k in ("0", "1")]
    assert len(parts[0]) + len(parts[1]) == len(windows) and min(map(len, parts)) > 100
    gap_ns = [START_NS + round(t * 1e9) for t in gap]
    assert max(w.t0_ns for w in parts[0]) < gap_ns[0] and min(w.t0_ns for w in parts[1]) >= gap_ns[1]
    # the part after the gap: its clock and samples are the recording's own (a beat's sample counts from the part)
    whole = list(ecg_file_windows(_foreign_100(str(tmp_path_factory.mktemp("whole")), fs), start_ns=START_NS))
    by_t0 = {w.t0_ns: w for w in whole}
    away = [w for w in parts[1] if w.t0_ns > gap_ns[1] + 2e9]  # clear of the part's edge and filter tail
    same = [w for w in away if w.t0_ns in by_t0]
    assert len(same) >= 0.99 * len(away)
    assert all(np.allclose(w.samples, by_t0[w.t0_ns].samples, atol=2e-3) for w in same)
    assert sum(w.label == by_t0[w.t0_ns].label for w in same) >= 0.99 * len(away)
    # lost: at least the beats whose window overlaps the gap, at most those within a second of it (part edges)
    span_ns = mitdb.WINDOW * 1e9 / mitdb.FS
    overlapping = sum(gap_ns[0] - span_ns < w.t0_ns < gap_ns[1] for w in whole)
    near = sum(gap_ns[0] - 1e9 - span_ns < w.t0_ns < gap_ns[1] + 1e9 for w in whole)
    assert len(whole) - near <= len(windows) <= len(whole) - overlapping


def test_a_vibration_file_with_gaps_gives_frames_of_each_part_only(tmp_path) -> None:
    fs = 48_000
    sig = np.sin(2 * np.pi * 157.0 * np.arange(fs) / fs)  # 1 s
    sig[12_000:12_100] = np.nan  # a 2 ms dropout ...
    sig[30_000:30_010] = np.inf  # ... and a clipped-to-inf burst
    np.save(tmp_path / "drops.npy", sig)
    frames = list(vibration_file_windows(tmp_path / "drops.npy", fs=fs, lead="DE", start_ns=START_NS))
    assert [w.seq for w in frames] == list(range(len(frames)))
    assert [w.meta["segment"] for w in frames] == sorted(w.meta["segment"] for w in frames)
    assert {w.meta["segment"] for w in frames} == {"0", "1", "2"}
    assert all(np.isfinite(w.samples).all() for w in frames)
    starts = {k: min(w.t0_ns for w in frames if w.meta["segment"] == k) for k in ("1", "2")}
    assert starts == {"1": START_NS + 12_100 * 10**9 // fs, "2": START_NS + 30_010 * 10**9 // fs}
    # each part at 12 kHz: floor((its samples / 4 - 1024) / 1024) + 1 frames
    sizes = [12_000, 30_000 - 12_100, fs - 30_010]
    assert len(frames) == sum((-(-n // 4) - 1024) // 1024 + 1 for n in sizes)


@needs_data("mitdb")
def test_an_edf_file_is_read_with_its_rate_leads_and_units(tmp_path_factory) -> None:
    from wfdb.io.convert.edf import wfdb_to_edf

    root = tmp_path_factory.mktemp("edf")
    base = _foreign_100(str(root), 250)
    wfdb_to_edf(base, output_filename=f"{base}.edf")
    r = read_recording(f"{base}.edf", preferred=(mitdb.LEAD, "II"))
    wf = read_recording(f"{base}.hea")
    assert (r.name, r.fs, r.channel, r.unit, r.beats) == ("dev250", 250.0, "II", "uV", None)
    n = wf.signal.size  # EDF pads its last data record
    assert r.signal.size >= n and np.allclose(r.signal[:n], wf.signal, atol=1.0)  # µV, 16-bit both ways
    with pytest.raises(ValueError, match="header says 250 Hz"):
        read_recording(f"{base}.edf", fs=360)
    windows = list(ecg_file_windows(f"{base}.edf", start_ns=START_NS))
    assert windows[0].stream == "ecg-dev250" and windows[0].lead == "II" and windows[0].label is None
    assert abs(len(windows) - len(_original_100())) <= 0.01 * len(_original_100())


@needs_data("cwru")
def test_a_vibration_file_at_48khz_gives_the_loaders_frames(tmp_path) -> None:
    rec = next(r for r in cwru.list_recordings(read_rpms=False) if r.file_id == 97)  # the 48 kHz normal baseline
    mine = list(itertools.islice(vibration_file_windows(rec.path, fs=48000, start_ns=START_NS), 50))
    theirs = list(itertools.islice(vibration_windows(97, start_ns=START_NS), 50))
    assert mine[0].stream == "vibration-normal_0_97" and mine[0].meta["channel"].endswith("_DE_time")
    assert all(np.array_equal(a.samples, b.samples) and a.t0_ns == b.t0_ns for a, b in zip(mine, theirs, strict=True))
    assert {w.label for w in mine} == {None}  # a user's file carries no ground truth
    # read at the wrong rate (announced 12 kHz), it is another signal: what the spectrum detector exists for
    wrong = next(iter(vibration_file_windows(rec.path, fs=12000, start_ns=START_NS)))
    assert not np.allclose(wrong.samples, theirs[0].samples)


# ------------------------------------------------------------------------------------------------------------
# the gate: a lower-rate source is not unfamiliar for the power it never had


@needs_data("mitdb")
@pytest.mark.parametrize("fs", [250, 128])
def test_a_lower_rate_source_is_not_flagged_unfamiliar(tmp_path_factory, fs: int) -> None:
    """Before the spectrum detector was limited to the ECG band (0-40 Hz), 52 % (250 Hz) and 29 % (128 Hz) of such
    beats of 8 DS1 records were flagged unfamiliar while the model's labels did not change."""
    from streams.runtime import ModelRuntime

    runtime = ModelRuntime("cpu", {("ecg", "II"): "mitdb", ("ecg", "MLII"): "mitdb"})
    windows = list(ecg_file_windows(_foreign_100(str(tmp_path_factory.mktemp(f"gate{fs}")), fs), start_ns=START_NS))
    foreign, original = runtime.classify(windows), runtime.classify(list(_original_100()))
    unfamiliar = np.mean([r.reason == "unfamiliar" for r in foreign])
    baseline = np.mean([r.reason == "unfamiliar" for r in original])
    assert unfamiliar <= baseline + 0.03, (unfamiliar, baseline)
    pairs = _same_beats(windows, _original_100())
    assert len(pairs) >= 0.99 * len(original)
    assert np.mean([foreign[i].label == original[j].label for i, j in pairs]) >= 0.98
