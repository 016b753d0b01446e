"""MIT-BIH loader, RR features, beat windows and the paper's beat set, on the real records."""

from __future__ import annotations

import numpy as np
import pytest
from data_marks import needs_data

from models.data import mitdb, paper_mitdb
from models.data.fiducial import r_fiducial
from models.data.rr import RR_FEATURES, rr_features

needs_mitdb = needs_data("mitdb")


# -------------------------------------------------------------------------------------------- split constants
def test_inter_patient_split_constants():
    assert len(mitdb.DS1) == len(set(mitdb.DS1)) == 22
    assert len(mitdb.DS2) == len(set(mitdb.DS2)) == 22
    assert not set(mitdb.DS1) & set(mitdb.DS2)
    assert not set(mitdb.PACED_RECORDS) & set(mitdb.ALL_RECORDS)
    assert len(mitdb.ALL_RECORDS) == 44
    assert set(mitdb.VAL_RECORDS) < set(mitdb.DS1)
    assert set(mitdb.TRAIN_RECORDS) | set(mitdb.VAL_RECORDS) == set(mitdb.DS1)


@needs_mitdb
def test_ds1_annotation_counts_match_readme():
    assert mitdb.class_counts(mitdb.DS1) == {"N": 45866, "S": 944, "V": 3788, "F": 415, "Q": 8}


@needs_mitdb
def test_ds2_annotation_counts_match_readme():
    assert mitdb.class_counts(mitdb.DS2) == {"N": 44259, "S": 1837, "V": 3221, "F": 388, "Q": 7}


# ----------------------------------------------------------------------------------------------- beat windows
def test_beat_windows_shape_peak_index_and_edges():
    signal = np.arange(1000, dtype=np.float32)
    peaks = np.array([50, 96, 300, 840, 844, 999])
    x, kept = mitdb.beat_windows(signal, peaks)
    np.testing.assert_array_equal(kept, [False, True, True, True, False, False])
    assert x.shape == (3, 256) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, mitdb.BEFORE], [96, 300, 840])  # R-peak at index 96
    np.testing.assert_array_equal(x[1], np.arange(300 - 96, 300 + 160))


@needs_mitdb
def test_load_record_finds_mlii_by_name_and_r_peaks_sit_at_index_96():
    rec = mitdb.load_record("114")  # MLII is the second channel of record 114
    raw = mitdb.wfdb.rdrecord(str(mitdb.record_path("114")))
    assert raw.sig_name == ["V5", "MLII"]
    np.testing.assert_allclose(rec.signal, raw.p_signal[:, 1].astype(np.float32))
    assert rec.signal.dtype == np.float32 and rec.signal.shape == (650000,) and rec.fs == 360
    assert rec.beat_samples.dtype == np.int64
    assert set(np.unique(rec.aami)) <= set(mitdb.AAMI_CLASSES)
    assert rec.beat_symbols.shape == rec.aami.shape == rec.beat_samples.shape
    x, kept = mitdb.beat_windows(rec.signal, rec.beat_samples)
    normal = rec.aami[kept] == "N"
    dev = np.abs(x[normal] - np.median(x[normal], axis=1, keepdims=True))
    peak_at = np.argmax(dev[:, 56:136], axis=1) + 56  # largest deflection within +-40 samples
    assert np.median(np.abs(peak_at - mitdb.BEFORE)) <= 3


@needs_mitdb
def test_load_beats_windows_labels_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCI_CACHE_DIR", str(tmp_path))
    beats = mitdb.load_beats(["208", "114"])
    counts = mitdb.class_counts(["208", "114"])
    got = beats.counts()
    assert set(got) == set(mitdb.CLASSES)
    for c in mitdb.CLASSES:  # only beats at the record edges are dropped
        assert counts[c] - 2 <= got[c] <= counts[c]
    assert beats.x.shape == (len(beats), 256) and beats.x.dtype == np.float32
    assert beats.rr.shape == (len(beats), len(RR_FEATURES)) and beats.rr.dtype == np.float32
    assert beats.y.dtype == np.int64 and beats.sample.dtype == np.int64
    assert list(np.unique(beats.record)) == ["114", "208"]
    rec = mitdb.load_record("114")
    i = np.flatnonzero(beats.record == "114")[100]
    s = beats.sample[i]  # the annotated sample; the window is centred on its R fiducial, RR between fiducials
    fid = r_fiducial(rec.signal, rec.beat_samples, 360.0)
    j = np.searchsorted(rec.beat_samples, s)
    assert abs(fid[j] - s) <= round(0.05 * 360)
    np.testing.assert_array_equal(beats.x[i], rec.signal[fid[j] - 96 : fid[j] + 160])
    np.testing.assert_allclose(beats.rr[i], rr_features(fid, 360.0)[j])

    files = sorted((tmp_path / "mitdb_beats").glob("*.npz"))
    assert len(files) == 2
    again = mitdb.load_beats(["208", "114"])  # from cache
    np.testing.assert_array_equal(again.x, beats.x)
    np.testing.assert_array_equal(again.y, beats.y)
    mitdb.load_beats(["114"], before=90, after=166)  # other parameters -> another cache entry
    assert len(list((tmp_path / "mitdb_beats").glob("*.npz"))) == 3


@needs_mitdb
def test_split_validation_is_ds1_only_and_covers_every_class():
    train, val = mitdb.split_validation(mitdb.DS1)
    assert set(train) | set(val) == set(mitdb.DS1) and not set(train) & set(val)
    assert val == mitdb.VAL_RECORDS
    for part in (train, val):
        counts = mitdb.class_counts(part)
        assert all(counts[c] > 0 for c in mitdb.CLASSES), counts
    with pytest.raises(ValueError, match="DS1 only"):
        mitdb.split_validation([*mitdb.DS1, "100"])


@needs_mitdb
def test_split_validation_on_a_beatset(tmp_path, monkeypatch):
    monkeypatch.setenv("SCI_CACHE_DIR", str(tmp_path))
    beats = mitdb.load_beats(["208", "220", "223"])
    train, val = mitdb.split_validation(beats)
    assert set(train.record) == {"208"} and set(val.record) == {"220", "223"}
    assert len(train) + len(val) == len(beats)
    with pytest.raises(ValueError, match="DS1 only"):
        mitdb.split_validation(mitdb.load_beats(["232"]))


# ------------------------------------------------------------------------------------ paper beat set (125 Hz)
@needs_mitdb
def test_paper_beat_table_covers_every_annotated_beat():
    table = paper_mitdb.paper_beat_table()
    counts = mitdb.class_counts(mitdb.ALL_RECORDS)
    assert table.x.shape == (sum(counts.values()), 187) == (100733, 187)
    np.testing.assert_array_equal(np.bincount(table.label, minlength=5), [counts[c] for c in "NSVFQ"])
    assert table.x.min() >= 0.0 and table.x.max() <= 1.0
    length = (table.x > 0).sum(axis=1)
    assert np.median(length) > 80  # 1.2 x a typical RR of 0.6-1 s at 125 Hz = 90-150 samples
    assert np.median(table.x[:, 0]) > 0.7  # beats start at the R-peak, near the top of the [0, 1] range


@needs_mitdb
def test_load_paper_beats_shapes_balance_and_determinism():
    a = paper_mitdb.load_paper_beats(seed=42)
    assert a.x_train.shape == (12000, 187) and a.x_test.shape == (2000, 187)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert set(np.unique(a.y_train)) == {0, 1}
    np.testing.assert_array_equal(a.y_train, (a.label_train != 0).astype(np.int64))
    # abnormal share of all 44 records is 10608 / 100733 = 10.5 %
    assert 0.09 < a.y_train.mean() < 0.12 and 0.07 < a.y_test.mean() < 0.14
    assert not set(a.id_train.tolist()) & set(a.id_test.tolist())
    b = paper_mitdb.load_paper_beats(seed=42)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = paper_mitdb.load_paper_beats(seed=7)
    assert not np.array_equal(a.id_train, c.id_train)
