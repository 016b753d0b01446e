"""Influx sink: line protocol builders; writes/queries against the local stack's real influxd 1.6.7."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from streams.contracts import SensorWindow
from streams.influx import (
    InfluxV1Sink,
    InfluxV2Sink,
    decision_columns,
    detect_influx_version,
    make_sink,
    window_point,
    window_points,
)
from streams.runtime import WindowResult
from streams.sinks import RetryPolicy, SinkError, SinkRejected, SinkUnavailable, WindowDecision, WindowSink
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
                                   sink_backoff_s=0.01)
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
        "predicted": rng.choice(["normal", "ball", "inner", ""], n),
        "sp": rng.random(n).astype(np.float32),  # float32 input: both builders widen to float64
        "delta_sp": np.where(rng.random(n) < 0.2, np.nan,
                             rng.normal(size=n) * 10.0 ** rng.integers(-9, 20, n)),  # both notations
        "passes": rng.integers(1, 40, n).astype(np.int32),
        "max_prob": np.where(rng.random(n) < 0.1, np.inf, np.round(rng.random(n) * 4) / 2),  # whole floats
        "latency_ms": np.where(rng.random(n) < 0.5, -0.0, rng.random(n) * 100),
        "seq": np.arange(n, dtype=np.int64),
        "t0_ns": T0 + np.arange(n, dtype=np.int64) * 711_111_111,
        "truth": np.array(rng.choice(["normal", "ball", None, "", 'q"\\x'], n), dtype=object),
        "lead": np.array(rng.choice(["DE", "FE x", None, ""], n), dtype=object),
        "reason": rng.choice(["budget", "threshold", "unsupported_lead"], n),
    }
    expected = [window_point(**row).to_line_protocol() for row in rows_as_dicts(rows)]
    assert window_points(rows) == expected
    del rows["truth"], rows["lead"], rows["reason"]
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
    sink.write_lines(window_points(ROWS))
    assert sink.counters() == {"written": 3, "failed": 0, "requests": 1}
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
    sink.write_lines([window_point(**point)])
    sink.write_lines([window_point(**{**point, "sp": 0.75, "passes": 6})])  # replay: same tags + time
    assert sink.query("SELECT count(sp) FROM sci_window")[0]["count"] == 1
    got = sink.query("SELECT sp, passes, seq FROM sci_window")
    assert got == [{"time": T0, "sp": 0.75, "passes": 6, "seq": 9}]
    assert sink.written == 2


@pytest.mark.integration
def test_chunks_and_client_errors_are_not_retried(sink):
    sink.batch_lines = 2
    lines = [*window_points(ROWS), window_points(ROWS)[0], "sci_window,stream=x sp=oops 1"]  # last is bad
    with pytest.raises(SinkRejected, match=r"rejected the write \(HTTP 400\).*unable to parse"):
        sink.write_lines(lines)
    assert (sink.written, sink.failed, sink.requests) == (4, 1, 3)  # chunks of 2, 2, 1; the last failed once
    assert sink.query("SELECT count(sp) FROM sci_window")[0]["count"] == 3  # the 4th line re-wrote the 1st


@pytest.mark.integration
def test_unknown_database_is_a_client_error_with_the_server_message(local_stack):
    with InfluxV1Sink(local_stack.settings.influx_url, db="no_such_db") as sink:
        message = r'HTTP 404\): \{"error":"database not found: \\"no_such_db\\""\}'
        with pytest.raises(SinkRejected, match=message):
            RetryPolicy(max_attempts=4, backoff_s=0.01).call(lambda: sink.write_lines(window_points(ROWS)), "t")
        assert (sink.written, sink.failed, sink.requests) == (0, 3, 1)  # a client error is not retried


def test_closed_port_is_unavailable_and_retried_by_the_policy():
    (port,) = free_ports(1)
    with InfluxV1Sink(f"http://127.0.0.1:{port}", db="sci", timeout_s=1.0) as sink:
        assert isinstance(sink, WindowSink)
        with pytest.raises(SinkUnavailable, match=f"127.0.0.1:{port}: ConnectionError"):
            RetryPolicy(max_attempts=3, backoff_s=0.01).call(lambda: sink.write_lines(window_points(ROWS)), "t")
        assert (sink.written, sink.failed, sink.requests) == (0, 9, 3)
        assert sink.health() == (False, f"InfluxDB at http://127.0.0.1:{port} unreachable (ConnectionError)")


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
        with pytest.raises(SinkRejected, match="HTTP 404"):
            v2.write_lines(window_points(ROWS))
        assert (v2.requests, v2.failed) == (1, 3)


def test_detection_on_a_closed_port_says_what_to_do():
    (port,) = free_ports(1)
    with pytest.raises(SinkError, match="SCI_INFLUX_VERSION=1"):
        detect_influx_version(f"http://127.0.0.1:{port}", timeout_s=0.5, retry=RetryPolicy(2, backoff_s=0.01))


@pytest.mark.integration
def test_query_errors_carry_the_server_message(sink):
    with pytest.raises(SinkError, match="error parsing query"):
        sink.query("SELECT FROM")
    assert sink.query("SELECT * FROM sci_window") == []


def _decision(seq: int, lead: str, result: WindowResult) -> WindowDecision:
    w = SensorWindow("vib-1", "vibration", 12000.0, T0 + seq, seq, np.zeros(4, np.float32), label="ball", lead=lead)
    return WindowDecision(w, result, latency_ms=2.5, worker="w")


def test_decisions_become_the_documented_columns():
    served = WindowResult("cwru", ("normal", "ball"), "ball", np.array([0.2, 0.8], np.float32), 0.3, 0.55, 7,
                          False, "threshold", "DE")
    rows = decision_columns([_decision(0, "DE", served), _decision(1, "FE", WindowResult.unserved("FE"))])
    lines = window_points(rows)
    assert lines[0] == (r"sci_window,decision=stopped,lead=DE,modality=vibration,model=cwru,predicted=ball,"
                        r"reason=threshold,stream=vib-1 correct=true,delta_sp=0.55,latency_ms=2.5,"
                        f'max_prob=0.800000011920929,passes=7i,seq=0i,sp=0.3,truth="ball" {T0}')
    # no model: no model or predicted tag, no max_prob, no correct; abstained with its reason
    assert lines[1] == (r"sci_window,decision=abstained,lead=FE,modality=vibration,reason=unsupported_lead,"
                        r"stream=vib-1 delta_sp=0,latency_ms=2.5,passes=0i,seq=1i,sp=0,"
                        f'truth="ball" {T0 + 1}')


@pytest.mark.integration
def test_decisions_are_stored_with_lead_and_reason_tags(sink):
    served = WindowResult("cwru", ("normal", "ball"), "ball", np.array([0.2, 0.8], np.float32), 0.3, 0.55, 7,
                          False, "threshold", "DE")
    sink.write([_decision(0, "DE", served), _decision(1, "FE", WindowResult.unserved("FE"))])
    got = sink.query("SELECT lead, reason, decision, passes FROM sci_window ORDER BY time")
    assert [(r["lead"], r["reason"], r["decision"], r["passes"]) for r in got] == [
        ("DE", "threshold", "stopped", 7), ("FE", "unsupported_lead", "abstained", 0)]
