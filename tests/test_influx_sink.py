"""Influx sink: line protocol builders; writes/queries against the local stack's real influxd 1.6.7."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from streams.influx import (
    InfluxV1Sink,
    InfluxV2Sink,
    SinkError,
    detect_influx_version,
    make_sink,
    window_point,
    window_points,
)
from streams.stack import free_ports

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in ns

ROWS = {  # three windows: truth known and right, unknown, known and wrong (with a NaN ΔSP)
    "stream": ["mitdb 100", "mitdb,101", "a=b"],
    "modality": "ecg",
    "model": "ecg_cnn",
    "decision": ["stopped", "abstained", "stopped"],
    "predicted": ["N", "V", "S"],
    "sp": [0.91, 0.42, 1.0],
    "delta_sp": [0.01, 0.35, float("nan")],
    "passes": [3, 20, 5],
    "max_prob": [0.97, 0.51, 0.66],
    "latency_ms": [4.25, 12.5, 6.0],
    "seq": [0, 1, 2],
    "t0_ns": [T0, T0 + 1_000_000, T0 + 2_000_000],
    "truth": ["N", None, 'V "x"'],
}


def rows_as_dicts(rows: dict) -> list[dict]:
    n = len(rows["seq"])
    return [{k: (v[i] if isinstance(v, list | np.ndarray) else v) for k, v in rows.items()} for i in range(n)]


@pytest.fixture
def sink(local_stack):
    """A v1 sink on a fresh database of the session's influxd (tests do not see each other's points)."""
    settings = dataclasses.replace(local_stack.settings, influx_db=f"sink_{uuid.uuid4().hex[:10]}",
                                   influx_backoff_s=0.01)
    s = InfluxV1Sink.from_settings(settings)
    s.query(f'CREATE DATABASE "{settings.influx_db}"')
    yield s
    s.query(f'DROP DATABASE "{settings.influx_db}"')
    s.close()


# ------------------------------------------------------------------------------------------- builders
def test_window_point_line_protocol_by_hand():
    line = window_point("rec 1,a", "ecg", "m=1", "stopped", "N", sp=0.5, delta_sp=2.0, passes=3,
                        max_prob=0.25, latency_ms=float("nan"), seq=7, t0_ns=T0, truth="N").to_line_protocol()
    assert line == (r"sci_window,decision=stopped,modality=ecg,model=m\=1,predicted=N,stream=rec\ 1\,a "
                    'correct=true,delta_sp=2,max_prob=0.25,passes=3i,seq=7i,sp=0.5,truth="N" '
                    "1700000000000000000")


def test_batch_builder_matches_point_builder():
    rng = np.random.default_rng(7)
    n = 400
    rows = {
        "stream": rng.choice(["s 1", "s,2", "s=3", "tab\tnew\nline", "", "plain"], n),
        "modality": "vibration",
        "model": rng.choice(["cnn", "cnn v2"], n),
        "decision": rng.choice(["stopped", "abstained"], n),
        "predicted": rng.choice(["normal", "ball", "inner", "outer"], n),
        "sp": rng.random(n).astype(np.float32),  # float32 input: both builders widen to float64
        "delta_sp": np.where(rng.random(n) < 0.2, np.nan,
                             rng.normal(size=n) * 10.0 ** rng.integers(-9, 20, n)),  # both notations
        "passes": rng.integers(1, 40, n).astype(np.int32),
        "max_prob": np.where(rng.random(n) < 0.1, np.inf, np.round(rng.random(n) * 4) / 2),  # whole floats
        "latency_ms": np.where(rng.random(n) < 0.5, -0.0, rng.random(n) * 100),
        "seq": np.arange(n, dtype=np.int64),
        "t0_ns": T0 + np.arange(n, dtype=np.int64) * 711_111_111,
        "truth": np.array(rng.choice(["normal", "ball", None, "", 'q"\\x'], n), dtype=object),
    }
    expected = [window_point(**row).to_line_protocol() for row in rows_as_dicts(rows)]
    assert window_points(rows) == expected
    del rows["truth"]
    assert window_points(rows) == [window_point(**row).to_line_protocol() for row in rows_as_dicts(rows)]


def test_batch_builder_checks_columns():
    with pytest.raises(ValueError, match=r"missing columns \['t0_ns'\]"):
        window_points({k: v for k, v in ROWS.items() if k != "t0_ns"})
    with pytest.raises(ValueError, match="1-D of length 3"):
        window_points({**ROWS, "seq": [0, 1]})
    assert window_points({k: ([] if isinstance(v, list) else v) for k, v in ROWS.items()}) == []


# --------------------------------------------------------------------------------------- real influxd
@pytest.mark.integration
def test_written_windows_read_back_exactly(sink):
    sink.write(window_points(ROWS))
    assert (sink.written, sink.failed, sink.attempts) == (3, 0, 1)
    got = sink.query("SELECT * FROM sci_window ORDER BY time")
    assert got == [
        {"time": T0, "stream": "mitdb 100", "modality": "ecg", "model": "ecg_cnn", "decision": "stopped",
         "predicted": "N", "sp": 0.91, "delta_sp": 0.01, "passes": 3, "max_prob": 0.97, "latency_ms": 4.25,
         "seq": 0, "truth": "N", "correct": True},
        {"time": T0 + 1_000_000, "stream": "mitdb,101", "modality": "ecg", "model": "ecg_cnn",
         "decision": "abstained", "predicted": "V", "sp": 0.42, "delta_sp": 0.35, "passes": 20,
         "max_prob": 0.51, "latency_ms": 12.5, "seq": 1, "truth": None, "correct": None},
        {"time": T0 + 2_000_000, "stream": "a=b", "modality": "ecg", "model": "ecg_cnn",
         "decision": "stopped", "predicted": "S", "sp": 1.0, "delta_sp": None, "passes": 5, "max_prob": 0.66,
         "latency_ms": 6.0, "seq": 2, "truth": 'V "x"', "correct": False},
    ]
    # tags are tags (groupable), fields have the schema's types
    assert {r["tagKey"] for r in sink.query("SHOW TAG KEYS FROM sci_window")} == {
        "stream", "modality", "model", "decision", "predicted"}
    assert {r["fieldKey"]: r["fieldType"] for r in sink.query("SHOW FIELD KEYS FROM sci_window")} == {
        "sp": "float", "delta_sp": "float", "passes": "integer", "max_prob": "float", "latency_ms": "float",
        "seq": "integer", "truth": "string", "correct": "boolean"}
    assert {r["value"] for r in sink.query('SHOW TAG VALUES FROM sci_window WITH KEY = "stream"')} == {
        "mitdb 100", "mitdb,101", "a=b"}


@pytest.mark.integration
def test_rewriting_a_window_overwrites_it(sink):
    point = dict(stream="rec 7", modality="ecg", model="m", decision="stopped", predicted="N", sp=0.5,
                 delta_sp=0.1, passes=4, max_prob=0.8, latency_ms=3.0, seq=9, t0_ns=T0)
    sink.write([window_point(**point)])
    sink.write([window_point(**{**point, "sp": 0.75, "passes": 6})])  # replay: same tags + time
    assert sink.query("SELECT count(sp) FROM sci_window")[0]["count"] == 1
    got = sink.query("SELECT sp, passes, seq FROM sci_window")
    assert got == [{"time": T0, "sp": 0.75, "passes": 6, "seq": 9}]
    assert sink.written == 2


@pytest.mark.integration
def test_chunks_and_client_errors_are_not_retried(sink):
    sink.batch_lines = 2
    lines = [*window_points(ROWS), window_points(ROWS)[0], "sci_window,stream=x sp=oops 1"]  # last is bad
    with pytest.raises(SinkError, match=r"rejected the write \(HTTP 400\).*unable to parse"):
        sink.write(lines)
    assert (sink.written, sink.failed, sink.attempts) == (4, 1, 3)  # chunks of 2, 2, 1; the last failed once
    assert sink.query("SELECT count(sp) FROM sci_window")[0]["count"] == 3  # the 4th line re-wrote the 1st


@pytest.mark.integration
def test_unknown_database_is_a_client_error_with_the_server_message(local_stack):
    with InfluxV1Sink(local_stack.settings.influx_url, db="no_such_db", max_attempts=4) as sink:
        message = r'HTTP 404\): \{"error":"database not found: \\"no_such_db\\""\}'
        with pytest.raises(SinkError, match=message):
            sink.write(window_points(ROWS))
        assert (sink.written, sink.failed, sink.attempts) == (0, 3, 1)


def test_closed_port_fails_after_the_configured_attempts():
    (port,) = free_ports(1)
    with InfluxV1Sink(f"http://127.0.0.1:{port}", db="sci", max_attempts=3, backoff_s=0.01,
                      timeout_s=1.0) as sink:
        with pytest.raises(SinkError, match="failed after 3 attempt"):
            sink.write(window_points(ROWS))
        assert (sink.written, sink.failed, sink.attempts) == (0, 3, 3)


@pytest.mark.integration
def test_auto_detection_picks_v1_from_the_ping_header(local_stack):
    settings = local_stack.settings
    assert settings.influx_version == "auto"
    assert detect_influx_version(settings.influx_url) == "1"
    with make_sink(settings) as sink:
        assert isinstance(sink, InfluxV1Sink)
        assert sink.query("SHOW DATABASES") != []
    with make_sink(dataclasses.replace(settings, influx_version="2", influx_org="lab")) as v2:
        assert isinstance(v2, InfluxV2Sink)
        # 1.6.7 has no /api/v2/write: a 404 client error, raised at once
        with pytest.raises(SinkError, match="HTTP 404"):
            v2.write(window_points(ROWS))
        assert (v2.attempts, v2.failed) == (1, 3)


def test_detection_on_a_closed_port_says_what_to_do():
    (port,) = free_ports(1)
    with pytest.raises(SinkError, match="SCI_INFLUX_VERSION=1"):
        detect_influx_version(f"http://127.0.0.1:{port}", timeout_s=0.5, attempts=2, backoff_s=0.01)


@pytest.mark.integration
def test_query_errors_carry_the_server_message(sink):
    with pytest.raises(SinkError, match="error parsing query"):
        sink.query("SELECT FROM")
    assert sink.query("SELECT * FROM sci_window") == []
