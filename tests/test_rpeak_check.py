"""`sci-monitor rpeaks`: the detector against the annotations and live vs offline labels, on a real record."""

from __future__ import annotations

import json

import numpy as np
from data_marks import needs_data

from sci_monitor.cli import main
from streams.rpeak_check import RecordCheck, check_records

needs_mitdb = needs_data("mitdb")


def test_pool_sums_counts_and_concatenates_offsets():
    a = RecordCheck("a", n_ref=10, n_det=9, n_match=9, offsets_ms=np.array([0.0, 2.8]), n_pairs=9, n_agree=8)
    b = RecordCheck("b", n_ref=10, n_det=12, n_match=10, offsets_ms=np.array([-5.6, 8.3, 11.1]), n_pairs=10,
                    n_agree=10)
    p = RecordCheck.pool("all", [a, b])
    assert (p.n_ref, p.n_det, p.n_match, p.n_pairs, p.n_agree) == (20, 21, 19, 19, 18)
    assert p.sensitivity == 19 / 20 and p.ppv == 19 / 21 and p.agreement == 18 / 19
    assert p.median_abs_offset_ms == 5.6
    assert p.summary()["accuracy_live"] is None  # no labelled windows: undefined, not 0


@needs_mitdb
def test_record_100_detector_and_label_agreement():
    (r,) = check_records(["100"])  # with the committed mitdb checkpoint
    assert r.n_ref == 2273 and r.sensitivity > 0.999 and r.ppv > 0.999
    assert r.median_abs_offset_ms <= 3.0
    assert r.n_pairs > 2200 and r.agreement > 0.98
    assert abs(r.accuracy_live - r.accuracy_offline) < 0.01


@needs_mitdb
def test_cli_writes_json_and_fails_in_one_line(tmp_path, capsys):
    out = tmp_path / "rp.json"
    assert main(["rpeaks", "--records", "100", "--checkpoint", "none", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tolerance_s"] == 0.150 and report["records"][0]["sensitivity"] > 0.999
    assert report["records"][0]["agreement"] is None  # labels not checked without a checkpoint
    assert main(["rpeaks", "--records", "999", "--checkpoint", "none"]) == 2
    assert "MIT-BIH record 999" in capsys.readouterr().err
