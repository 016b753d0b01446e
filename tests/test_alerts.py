"""Alert subscriptions (streams/alerts.py): filter, burst grouping, webhook/command delivery, and end to end on the
real local stack with a real worker, a restart of the subscriber and a local HTTP webhook."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streams.alerts import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BurstGrouper,
    CommandDestination,
    DeliveryError,
    Event,
    EventFilter,
    Notification,
    WebhookDestination,
    parse_event,
    verify_signature,
)
from streams.contracts import AlertMessage, EscalationMessage, LabelMessage

REPO = Path(__file__).resolve().parents[1]


def _event(stream: str, i: int, kind: str = "alert", severity: str = "warning", offset: int | None = None,
           modality: str = "ecg", reason: str = "budget") -> Event:
    return Event(kind, f"{kind}/{stream}:{i}", stream, modality, reason, severity, {"seq": i}, "t", 0,
                 i if offset is None else offset)


class Receiver:
    """A local HTTP webhook receiver: records (arrival time, headers, body); the first ``fail`` requests get
    ``status_on_fail``."""

    def __init__(self, fail: int = 0, status_on_fail: int = 503) -> None:
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.fail, self.status_on_fail, self.seen = fail, status_on_fail, 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.seen += 1
                if receiver.seen <= receiver.fail:
                    self.send_response(receiver.status_on_fail)
                else:
                    receiver.requests.append((time.monotonic(), dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [json.loads(b) for _, _, b in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# ---- units ---------------------------------------------------------------------------------------------
def test_parse_event_keys_and_severity():
    m = LabelMessage(stream="p1", modality="ecg", seq=3, t0_ns=1, model="mitdb", label="N", probs={"N": 1.0},
                     sp=0.2, delta_sp=0.55, passes=25, decision="abstained", reason="budget", latency_ms=1.0,
                     worker="w")
    esc = parse_event("escalation", EscalationMessage.from_label(m).to_json(), "sci.escalations", 0, 9)
    alert = parse_event("alert", AlertMessage.from_label(m, "critical", 0.5).to_json())
    assert (esc.key, esc.severity, esc.offset) == ("escalation/p1:3", "warning", 9)
    assert (alert.key, alert.severity) == ("alert/p1:3", "critical")
    with pytest.raises(ValueError):
        parse_event("alert", b'{"v": 1, "stream": "p1"}')


def test_filter_combines_patterns_modalities_reasons_and_severity():
    f = EventFilter(streams=("mitdb-2*", "cwru-1?5"), modalities=("ecg", "vibration"), reasons=("budget",),
                    min_severity="warning", kinds=("alert",))
    assert f.matches(_event("mitdb-208", 1))
    assert f.matches(_event("cwru-105", 1, modality="vibration"))
    assert not f.matches(_event("cwru-1050", 1, modality="vibration"))  # a glob, not a prefix
    assert not f.matches(_event("mitdb-100", 1))
    assert not f.matches(_event("mitdb-208", 1, reason="unfamiliar"))
    assert not f.matches(_event("mitdb-208", 1, kind="escalation"))
    assert EventFilter(min_severity="critical").matches(_event("x", 1, severity="critical"))
    assert not EventFilter(min_severity="critical").matches(_event("x", 1, severity="warning"))
    with pytest.raises(ValueError):
        EventFilter(min_severity="info")


def test_burst_grouper_one_notification_per_stream_per_cooldown():
    now = [100.0]
    g = BurstGrouper(5.0, clock=lambda: now[0])
    sent = []
    for i in range(6):  # stream a: a burst of 6 within 1 s
        now[0] = 100.0 + i * 0.2
        sent += [(now[0], n) for n in [g.offer(_event("a", i))] if n]
    sent += [(now[0], n) for n in [g.offer(_event("b", 0, offset=50))] if n]  # another stream is independent
    assert [(n.key, n.suppressed) for _, n in sent] == [("alert/a:0", 0), ("alert/b:0", 0)]
    assert g.held_offsets() == {("t", 0): 1}  # a:1 is the lowest held offset: commits stay below it
    now[0] = 104.9
    assert g.due() == []
    now[0] = 105.0
    (summary,) = g.due()
    assert (summary.key, summary.suppressed, summary.keys) == (
        "alert/a:5", 4, ("alert/a:5", "alert/a:1", "alert/a:2", "alert/a:3", "alert/a:4"))
    assert g.held_offsets() == {}
    # a new event of a inside the next cool-down (opened by the summary) is held, after it goes out at once
    now[0] = 106.0
    assert g.offer(_event("a", 6)) is None
    now[0] = 110.0
    assert [(n.key, n.suppressed) for n in g.due()] == [("alert/a:6", 0)]
    now[0] = 115.1
    assert g.due() == [] and g.offer(_event("a", 7)) is not None
    # cool-down 0: every event at once
    g0 = BurstGrouper(0.0)
    assert all(g0.offer(_event("a", i)) is not None for i in range(3)) and g0.due() == []


def test_webhook_retries_with_backoff_and_signs(caplog):
    r = Receiver(fail=2)
    sleeps: list[float] = []
    try:
        secret = b"s3cret-value"
        hook = WebhookDestination(r.url + "?token=query-token", secret, max_attempts=3, backoff_s=0.25,
                                  sleep=sleeps.append)
        n = Notification(_event("a", 1), 2, ("alert/a:1", "alert/a:0", "alert/a:2"))
        with caplog.at_level(logging.WARNING, logger="sci_monitor.alerts"):
            hook.deliver(n)
        assert sleeps == [0.25, 0.5] and r.seen == 3
        ((_, headers, body),) = r.requests
        assert headers[KEY_HEADER] == "alert/a:1"
        assert verify_signature(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify_signature(b"other", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["suppressed"] == 2 and json.loads(body)["keys"][0] == "alert/a:1"
        assert "attempt 1 failed" in caplog.text
        assert "s3cret" not in caplog.text and "query-token" not in caplog.text
    finally:
        r.close()


def test_webhook_gives_up_loudly():
    r = Receiver(fail=10, status_on_fail=400)
    try:
        hook = WebhookDestination(r.url, None, max_attempts=5, backoff_s=0, sleep=lambda s: None)
        with pytest.raises(DeliveryError, match=r"HTTP 400.*not retried"):
            hook.deliver(Notification(_event("a", 1)))
        assert r.seen == 1  # a 4xx is not retried
        r.status_on_fail = 503
        with pytest.raises(DeliveryError, match="after 5 attempt"):
            hook.deliver(Notification(_event("a", 1)))
        assert r.seen == 6
    finally:
        r.close()
    with pytest.raises(DeliveryError, match="ConnectionError"):  # nobody listens any more
        WebhookDestination(r.url, max_attempts=2, backoff_s=0, sleep=lambda s: None).deliver(
            Notification(_event("a", 1)))


def test_command_destination_gets_the_json_on_stdin(tmp_path):
    out = tmp_path / "got.jsonl"
    script = (f"import os, sys; open({str(out)!r}, 'a')"
              ".write(os.environ['SCI_EVENT_KEY'] + ' ' + sys.stdin.read() + '\\n')")
    CommandDestination([sys.executable, "-c", script]).deliver(Notification(_event("a", 4)))
    key, body = out.read_text().split(" ", 1)
    assert key == "alert/a:4" and json.loads(body)["key"] == key
    failing = CommandDestination([sys.executable, "-c", "raise SystemExit(3)"], max_attempts=2, backoff_s=0)
    with pytest.raises(DeliveryError, match="exit code 3"):
        failing.deliver(Notification(_event("a", 4)))


# ---- end to end ------------------------------------------------------------------------------------------
_SUBSCRIBERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_subscribers():
    """A failed test must not leave subscriber processes behind."""
    yield
    while _SUBSCRIBERS:
        proc = _SUBSCRIBERS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _subscribe(s, name: str, out_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "SCI_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "SCI_TOPIC_PREFIX": s.topic_prefix,
           "PYTHONPATH": str(REPO), **(env or {})}
    with out_path.open("ab") as out, (out_path.with_suffix(".log")).open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sci_monitor", "alerts", "subscribe", "--name", name,
                                 "--from-beginning", *args], env=env, stdout=out, stderr=err)
    _SUBSCRIBERS.append(proc)
    return proc


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-2000:]


WARNING, CRITICAL = 0.3, 0.5  # the worker's ΔSP levels here (settings override the cards': independent of calibration)


def _alerts(label: dict) -> bool:
    return bool(label["model"]) and label["delta_sp"] >= WARNING


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.integration
def test_subscriptions_deliver_matching_events_once_across_a_restart(local_stack, tmp_path, receiver, monkeypatch):
    from test_pipeline_integration import _consume_all, _private_pipeline, _start_worker, _stop_worker

    from models.data import cwru
    from streams.replay import Replayer, ecg_windows, vibration_windows

    s, _ = _private_pipeline(local_stack)
    tag = s.topic_prefix
    secret_env = {"SCI_TEST_HOOK_SECRET": "hook-secret-" + tag}
    filt = ("--stream", "mitdb-2*", "--min-severity", "warning", "--cooldown", "0")
    term_out = tmp_path / "terminal.jsonl"
    term = _subscribe(s, f"term-{tag}", term_out, *filt, "--json")
    hook = _subscribe(s, f"hook-{tag}", tmp_path / "hook.out", *filt, "--webhook", receiver.url,
                      "--secret-env", "SCI_TEST_HOOK_SECRET", env=secret_env)
    monkeypatch.setenv("SCI_ALERT_THRESHOLD", str(WARNING))
    monkeypatch.setenv("SCI_ALERT_CRITICAL", str(CRITICAL))
    worker, worker_log = _start_worker(s, tmp_path / "worker")
    n = 360
    try:
        start_ns = time.time_ns()
        streams = [ecg_windows(r, start_ns=start_ns) for r in ("100", "208", "232")]
        streams.append(vibration_windows(130, hop=8 * cwru.FRAME, start_ns=start_ns))
        summary = Replayer(s.kafka_bootstrap, s.topics["windows"], speed=0, progress=False).run(streams, max_windows=n)
        assert summary.produced == n

        # restart both subscribers once the first notifications arrived (mid-stream when the worker is slower)
        _wait(lambda: len(_lines(term_out)) >= 3 and len(receiver.requests) >= 3, 240, "first notifications")
        _stop(term, term_out.with_suffix(".log"))
        _stop(hook, tmp_path / "hook.log")
        term = _subscribe(s, f"term-{tag}", term_out, *filt, "--json")
        hook = _subscribe(s, f"hook-{tag}", tmp_path / "hook.out", *filt, "--webhook", receiver.url,
                          "--secret-env", "SCI_TEST_HOOK_SECRET", env=secret_env)

        labels = _consume_all(s.kafka_bootstrap, s.topics["labels"], n, timeout_s=300)
        assert len(labels) == n, worker_log.read_text()[-2000:]
        msgs = [json.loads(r.value) for r in labels]
        expected = {f"escalation/{m['stream']}:{m['seq']}" for m in msgs
                    if m["stream"].startswith("mitdb-2") and m["decision"] == "abstained"}
        expected |= {f"alert/{m['stream']}:{m['seq']}" for m in msgs
                     if m["stream"].startswith("mitdb-2") and _alerts(m)}
        assert any(k.startswith("escalation/") for k in expected) and any(k.startswith("alert/") for k in expected)
        _wait(lambda: len(_lines(term_out)) >= len(expected) and len(receiver.requests) >= len(expected), 60,
              f"{len(expected)} notifications")
        time.sleep(2)  # anything more would be a duplicate or an unwanted event
        _stop(term, term_out.with_suffix(".log"))
        _stop(hook, tmp_path / "hook.log")

        got_term = [d["key"] for d in _lines(term_out)]
        got_hook = [d["key"] for d in receiver.bodies()]
        for got in (got_term, got_hook):
            assert max(Counter(got).values()) == 1, "a notification was delivered twice"
            assert set(got) == expected
        for _, headers, body in receiver.requests:
            assert verify_signature(secret_env["SCI_TEST_HOOK_SECRET"].encode(), headers[TIMESTAMP_HEADER], body,
                                    headers[SIGNATURE_HEADER])
        assert secret_env["SCI_TEST_HOOK_SECRET"] not in (tmp_path / "hook.log").read_text()

        # cool-down: a burst per stream leaves as one notification now + one summary per cool-down, with counts
        burst = Receiver()
        cd = 2.0
        proc = _subscribe(s, f"burst-{tag}", tmp_path / "burst.out", "--modality", "ecg", "--cooldown", str(cd),
                          "--webhook", burst.url)
        try:
            ecg_keys = {f"escalation/{m['stream']}:{m['seq']}" for m in msgs
                        if m["modality"] == "ecg" and m["decision"] == "abstained"}
            ecg_keys |= {f"alert/{m['stream']}:{m['seq']}" for m in msgs
                         if m["modality"] == "ecg" and _alerts(m)}
            covered = lambda: sum(1 + b["suppressed"] for b in burst.bodies())  # noqa: E731
            _wait(lambda: covered() >= len(ecg_keys), 60, "the burst summaries")
            time.sleep(cd + 0.5)
            _stop(proc, tmp_path / "burst.log")
            per_stream: dict[str, list[float]] = {}
            keys: list[str] = []
            for (t, _, _), b in zip(burst.requests, burst.bodies(), strict=True):
                per_stream.setdefault(b["stream"], []).append(t)
                keys += b["keys"]
                assert len(b["keys"]) == 1 + b["suppressed"]
            assert covered() == len(ecg_keys) and sorted(keys) == sorted(ecg_keys)
            assert set(per_stream) == {"mitdb-100", "mitdb-208", "mitdb-232"} & {k.split("/")[1].split(":")[0]
                                                                                for k in ecg_keys}
            assert len(burst.requests) < len(ecg_keys)
            for times in per_stream.values():
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert all(g >= cd - 0.05 for g in gaps), gaps
        finally:
            if proc.poll() is None:
                proc.kill()
            burst.close()
    finally:
        _stop_worker(worker, worker_log)
        for p in (term, hook):
            if p.poll() is None:
                p.kill()
