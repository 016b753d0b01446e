"""Data paths, cache, synthetic generator and the fetcher's skip-what-is-present path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_marks import needs_data

from models.data import fetch as fetch_mod
from models.data import paths
from models.data.synthetic import paper_bearings


# -------------------------------------------------------------------------------------------------- synthetic
def test_paper_bearings_shapes_and_determinism():
    x, y = paper_bearings(500, seed=3)
    assert x.shape == (500, 200) and x.dtype == np.float32
    assert y.shape == (500,) and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    assert 0.4 < y.mean() < 0.6
    x2, y2 = paper_bearings(500, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = paper_bearings(500, seed=4)
    assert not np.array_equal(x, x3)


def test_paper_bearings_components():
    x, y = paper_bearings(4000, seed=0)
    t = np.linspace(0.0, 1.0, 200)
    fault = np.sin(2 * np.pi * 120 * t) * np.exp(-5 * t)
    shaft = np.sin(2 * np.pi * 30 * t)
    # projection on the 120 Hz decaying fault tone: 0.8 * |fault|^2 for y=1, noise only for y=0
    proj = x @ fault / (fault @ fault)
    assert abs(proj[y == 1].mean() - 0.8) < 0.05 and abs(proj[y == 0].mean()) < 0.05
    assert abs((x @ shaft / (shaft @ shaft)).mean() - 0.5) < 0.02
    # band power: t has 200 points over 1 s (199 Hz), so 120 Hz shows aliased at 199 - 120 = 79 Hz
    f = np.fft.rfftfreq(200, d=1 / 199)
    power = np.abs(np.fft.rfft(x, axis=1)) ** 2
    band = (f > 75) & (f < 83)
    assert power[y == 1][:, band].mean() > 2 * power[y == 0][:, band].mean()
    resid = x - 0.5 * shaft - y[:, None] * 0.8 * fault
    assert abs(resid.std() - 0.4) < 0.01


def test_paper_bearings_follow_the_reference_draw_order():
    # the paper's scripts seed numpy's legacy global stream, then per signal: one uniform (label), 200 normals
    x, y = paper_bearings(3, seed=42)
    rs = np.random.RandomState(42)
    t = np.linspace(0.0, 1.0, 200)
    for i in range(3):
        label = rs.rand() > 0.5
        expected = 0.5 * np.sin(2 * np.pi * 30 * t)
        if label:
            expected = expected + 0.8 * np.sin(2 * np.pi * 120 * t) * np.exp(-5 * t)
        expected = expected + rs.normal(0, 0.4, size=200)
        assert y[i] == label
        np.testing.assert_array_equal(x[i], expected.astype(np.float32))


# ------------------------------------------------------------------------------------------------- data paths
def test_data_dir_error_when_sci_data_dir_points_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv("SCI_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(paths.DataNotFoundError) as err:
        paths.data_dir()
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "\n" not in msg and "SCI_DATA_DIR" in msg and "sci-monitor data fetch mitdb|cwru" in msg
    assert str(tmp_path / "nowhere") in msg
    assert paths.data_dir(must_exist=False) == tmp_path / "nowhere"


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SCI_DATA_DIR", str(tmp_path))
    assert paths.data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert paths.data_dir(other) == other
    monkeypatch.delenv("SCI_DATA_DIR")
    assert paths.data_dir(must_exist=False) == paths.REPO_ROOT.parent / "shared" / "data"
    assert (paths.REPO_ROOT / "models" / "data" / "paths.py").is_file()


def test_dataset_dir_missing_or_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("SCI_DATA_DIR", str(tmp_path))
    (tmp_path / "cwru").mkdir()
    with pytest.raises(paths.DataNotFoundError, match=r"'cwru' not found or empty.*data fetch cwru"):
        paths.dataset_dir("cwru")
    with pytest.raises(paths.DataNotFoundError, match="SCI_DATA_DIR"):
        paths.dataset_dir("mitdb")
    with pytest.raises(ValueError, match="unknown dataset"):
        paths.dataset_dir("ptbxl")


def test_cache_dir_and_cached_arrays(monkeypatch, tmp_path):
    monkeypatch.setenv("SCI_CACHE_DIR", str(tmp_path / "cache"))
    assert paths.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    src = tmp_path / "source.bin"
    src.write_bytes(b"abc")
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(5, dtype=np.float32), "names": np.array(["x", "yy"])}

    first = paths.cached_arrays("unit", {"version": 1, "n": 5}, [src], build)
    second = paths.cached_arrays("unit", {"version": 1, "n": 5}, [src], build)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["a"], second["a"])
    assert second["names"].tolist() == ["x", "yy"]
    paths.cached_arrays("unit", {"version": 2, "n": 5}, [src], build)  # new code version -> rebuilt
    assert len(calls) == 2
    src.write_bytes(b"abcd")  # source changed -> rebuilt
    paths.cached_arrays("unit", {"version": 1, "n": 5}, [src], build)
    assert len(calls) == 3
    keys = {paths.cache_key({"version": v, "n": n}) for v in (1, 2) for n in (5, 6)}
    assert len(keys) == 4


# ------------------------------------------------------------------------------------------------------ fetch
@pytest.fixture
def no_downloads(monkeypatch):
    """Make any download attempt fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("fetch tried to download although the data is present")

    monkeypatch.setattr(fetch_mod.wfdb, "dl_database", forbidden)
    monkeypatch.setattr(fetch_mod, "_http_get", forbidden)


@needs_data("mitdb")
def test_fetch_mitdb_skips_present_files(no_downloads):
    root = paths.data_dir()
    report = fetch_mod.fetch("mitdb", root, progress=False)
    assert report.downloaded == ()
    assert len(report.present) == 132  # 44 records x (.hea, .dat, .atr), all matching SHA256SUMS.txt
    assert "132 files already present, 0 downloaded" in report.summary


@needs_data("cwru")
def test_fetch_cwru_skips_present_files(no_downloads):
    root = paths.data_dir()
    on_disk = {p.relative_to(root / "cwru").as_posix() for p in (root / "cwru").rglob("*.mat")}
    assert on_disk == set(fetch_mod.CWRU_FILES)  # the catalogue names exactly the shared files
    report = fetch_mod.fetch("cwru", root, progress=False)
    assert report.downloaded == () and len(report.present) == 61


@needs_data("mitdb")
def test_mitdb_checksum_mismatch_marks_record_incomplete(tmp_path):
    shared = paths.dataset_dir("mitdb")
    for ext in (".hea", ".dat", ".atr"):
        (tmp_path / f"100{ext}").symlink_to(shared / f"100{ext}")
    sums = fetch_mod._read_sums(shared)
    only_100 = {k: v for k, v in sums.items() if k.startswith("100.")}
    good, missing = fetch_mod._mitdb_complete(tmp_path, only_100)
    assert good == ["100.hea", "100.dat", "100.atr"] and "100" not in missing and len(missing) == 43
    sums["100.dat"] = "0" * 64
    _, missing = fetch_mod._mitdb_complete(tmp_path, sums)
    assert "100" in missing
    _, missing = fetch_mod._mitdb_complete(tmp_path, {})  # no checksums: header-based size check
    assert "100" not in missing


def test_fetch_network_error_is_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_mod, "CWRU_URL", "http://127.0.0.1:9/{file_id}.mat")  # nothing listens there
    with pytest.raises(fetch_mod.FetchError) as err:
        fetch_mod.fetch("cwru", tmp_path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "could not download CWRU file" in msg and "SCI_DATA_DIR" in msg
    assert not [p for p in Path(tmp_path).rglob("*") if p.is_file()]  # no partial files left behind
    with pytest.raises(ValueError, match="unknown dataset"):
        fetch_mod.fetch("ptbxl", tmp_path)
