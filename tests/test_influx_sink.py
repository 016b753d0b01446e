"""Influx sink: line protocol builders; writes/queries against the local stack's real influxd 1.6.7."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from models.controller_card import AlertLevels
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
from streams.sinks import (
    RetryPolicy,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    WindowDecision,
    WindowSink,
    alert_levels,
)
from streams.stack import free_ports

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in ns

ROWS = {  # three windows: truth known and right, unknown (gated: unfamiliar, 0 passes), known and wrong (NaN ΔSP)
    "stream": ["mitdb 100", "mitdb,101", "a=b"],
    "modality": "ecg",
    "model": "ecg_cnn",
    "decision": ["stopped", "abstained", "stopped"],
    "predicted": ["N", "V", "S"],
    "reason": ["threshold", "unfamiliar", "confident"],
    "quality": ["ok", "ok", None],
    "sp": [0.91, 0.42, 1.0],
    "delta_sp": [0.01, 0.35, float("nan")],
    "novelty": [0.4, 3.5, float("nan")],
    "confidence": [0.97, float("nan"), 0.66],
    "alert": [0, 2, 0],
    "passes": [3, 0, 5],
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
                    'alert=0i,correct=true,delta_sp=2,max_prob=0.25,passes=3i,seq=7i,sp=0.5,truth="N" '
                    "1700000000000000000")
    gated = window_point("s", "ecg", "m", "abstained", "N", sp=0.5, delta_sp=0.35, passes=0, max_prob=0.75,
                         latency_ms=1.0, seq=8, t0_ns=T0, reason="unfamiliar", quality="ok", novelty=2.5,
                         confidence=float("nan"), alert=1).to_line_protocol()
    assert gated == ("sci_window,decision=abstained,modality=ecg,model=m,predicted=N,quality=ok,reason=unfamiliar,"
                     "stream=s alert=1i,delta_sp=0.35,latency_ms=1,max_prob=0.75,novelty=2.5,passes=0i,seq=8i,sp=0.5 "
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
        "reason": rng.choice(["budget", "threshold", "unsupported_lead", "unfamiliar"], n),
        "quality": np.array(rng.choice(["ok", "flat", "clipped+amplitude", None, ""], n), dtype=object),
        "novelty": np.where(rng.random(n) < 0.3, np.nan, rng.random(n) * 3),
        "confidence": np.where(rng.random(n) < 0.3, np.nan, rng.random(n)),
        "alert": rng.integers(0, 3, n),
    }
    expected = [window_point(**row).to_line_protocol() for row in rows_as_dicts(rows)]
    assert window_points(rows) == expected
    del rows["truth"], rows["lead"], rows["reason"], rows["quality"], rows["novelty"], rows["confidence"]
    del rows["alert"]
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
         "predicted": "N", "reason": "threshold", "quality": "ok", "sp": 0.91, "delta_sp": 0.01, "novelty": 0.4,
         "confidence": 0.97, "alert": 0, "passes": 3, "max_prob": 0.97, "latency_ms": 4.25, "seq": 0,
         "truth": "N", "correct": True},
        {"time": T0 + 1_000_000, "stream": "mitdb,101", "modality": "ecg", "model": "ecg_cnn",
         "decision": "abstained", "predicted": "V", "reason": "unfamiliar", "quality": "ok", "sp": 0.42,
         "delta_sp": 0.35, "novelty": 3.5, "confidence": None, "alert": 2, "passes": 0, "max_prob": 0.51,
         "latency_ms": 12.5, "seq": 1, "truth": None, "correct": None},
        {"time": T0 + 2_000_000, "stream": "a=b", "modality": "ecg", "model": "ecg_cnn",
         "decision": "stopped", "predicted": "S", "reason": "confident", "quality": None, "sp": 1.0,
         "delta_sp": None, "novelty": None, "confidence": 0.66, "alert": 0, "passes": 5, "max_prob": 0.66,
         "latency_ms": 6.0, "seq": 2, "truth": 'V "x"', "correct": False},
    ]
    # tags are tags (groupable), fields have the schema's types
    assert {r["tagKey"] for r in sink.query("SHOW TAG KEYS FROM sci_window")} == {
        "stream", "modality", "model", "decision", "predicted", "reason", "quality"}
    assert {r["fieldKey"]: r["fieldType"] for r in sink.query("SHOW FIELD KEYS FROM sci_window")} == {
        "sp": "float", "delta_sp": "float", "passes": "integer", "max_prob": "float", "latency_ms": "float",
        "seq": "integer", "truth": "string", "correct": "boolean", "novelty": "float", "confidence": "float",
        "alert": "integer"}
    # dashboards count alerts and tell "unknown signal" from "ambiguous beat" without restating any threshold
    assert sink.query('SELECT count("alert") FROM sci_window WHERE "alert" >= 1')[0]["count"] == 1
    by_reason = sink.query('SELECT count("sp") FROM sci_window GROUP BY "reason"')
    assert {r["reason"]: r["count"] for r in by_reason} == {"threshold": 1, "unfamiliar": 1, "confident": 1}
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


LEVELS = AlertLevels(warning=0.12, critical=0.2, rates=(0.05, 0.01))  # a card's, unlike the old 0.3 / 0.5


def _decision(seq: int, lead: str, result: WindowResult) -> WindowDecision:
    w = SensorWindow("vib-1", "vibration", 12000.0, T0 + seq, seq, np.zeros(4, np.float32), label="ball", lead=lead)
    return WindowDecision(w, result, latency_ms=2.5, worker="w", levels=alert_levels(result))


def _results() -> list[WindowResult]:
    """Answered (ΔSP over the card's critical level), gated as unfamiliar before any pass (ΔSP over its warning
    level only), and no model for the lead."""
    probs = np.array([0.2, 0.8], np.float32)
    served = WindowResult("cwru", ("normal", "ball"), "ball", probs, 0.3, 0.55, 7, False, "threshold", "DE",
                          novelty=0.5, quality="ok", confidence=0.875, alerts=LEVELS)
    gated = WindowResult("cwru", ("normal", "ball"), "ball", probs, 0.7, 0.15, 0, True, "unfamiliar", "DE",
                         novelty=2.75, quality="ok", confidence=float("nan"), alerts=LEVELS)
    return [served, gated, WindowResult.unserved("FE")]


def test_decisions_become_the_documented_columns():
    rows = decision_columns([_decision(i, r.lead, r) for i, r in enumerate(_results())])
    lines = window_points(rows)
    assert lines[0] == (r"sci_window,decision=stopped,lead=DE,modality=vibration,model=cwru,predicted=ball,"
                        r"quality=ok,reason=threshold,stream=vib-1 alert=2i,confidence=0.875,correct=true,"
                        r"delta_sp=0.55,latency_ms=2.5,max_prob=0.800000011920929,novelty=0.5,passes=7i,seq=0i,"
                        f'sp=0.3,truth="ball" {T0}')
    # gated: 0 passes, the novelty that stopped it, no confidence (the risk rule never saw it), a warning alert
    # by the card's level 0.12 (none by the old 0.3)
    assert lines[1] == (r"sci_window,decision=abstained,lead=DE,modality=vibration,model=cwru,predicted=ball,"
                        r"quality=ok,reason=unfamiliar,stream=vib-1 alert=1i,correct=true,delta_sp=0.15,"
                        r"latency_ms=2.5,max_prob=0.800000011920929,novelty=2.75,passes=0i,seq=1i,sp=0.7,"
                        f'truth="ball" {T0 + 1}')
    # no model: no model, predicted or quality tag, no max_prob, novelty, confidence or correct; never an alert
    assert lines[2] == (r"sci_window,decision=abstained,lead=FE,modality=vibration,reason=unsupported_lead,"
                        r"stream=vib-1 alert=0i,delta_sp=0,latency_ms=2.5,passes=0i,seq=2i,sp=0,"
                        f'truth="ball" {T0 + 2}')


@pytest.mark.integration
def test_decisions_are_stored_with_lead_reason_quality_and_alert(sink):
    sink.write([_decision(i, r.lead, r) for i, r in enumerate(_results())])
    got = sink.query("SELECT lead, reason, quality, decision, passes, novelty, confidence, alert FROM sci_window "
                     "ORDER BY time")
    assert [tuple(r[k] for k in ("lead", "reason", "quality", "decision", "passes", "novelty", "confidence",
                                 "alert")) for r in got] == [
        ("DE", "threshold", "ok", "stopped", 7, 0.5, 0.875, 2),
        ("DE", "unfamiliar", "ok", "abstained", 0, 2.75, None, 1),
        ("FE", "unsupported_lead", None, "abstained", 0, None, None, 0)]
    unfamiliar = sink.query("""SELECT count("passes") FROM sci_window WHERE "reason" = 'unfamiliar'""")
    assert unfamiliar[0]["count"] == 1
