"""Nothing lost, nothing frozen (issue 8): fuzz and fault tests against the real broker, InfluxDB and worker.

- 10,000+ messages (hypothesis-generated hostile frames, every poison kind, extreme but valid windows, real
  recordings) through one worker: 0 crashes, every valid window labelled and stored exactly once, every invalid
  one dead-lettered exactly once with its reason, counts exact, the worker still consuming.
- Each poison kind of the issue among 500 valid windows: one dead letter each, 500 labels, 500 points.
- InfluxDB stopped for 30 s (readiness 503, a log line at once, retries counted, nothing published or lost),
  SIGTERM while InfluxDB is down (bounded exit, nothing committed, redelivered after a restart), and every log
  of the run searched for the secrets it was given.
- kill -9 of the worker mid-replay and a broker restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fuzz_messages import expected_outcome, malformed_frame, personalize
from hypothesis import HealthCheck, Phase, given, settings
from poison import BEAT, ECG_N, POISON, REASONS
from prometheus_client.parser import text_string_to_metric_families

from models.data import cwru
from streams.contracts import (
    STAGES,
    TIME_MAX_NS,
    TIME_MIN_NS,
    SensorWindow,
    decode_dead_letter,
    decode_window,
    encode_window,
)
from streams.demo import wait_worker_ready
from streams.replay import Replayer, ecg_windows, publish_raw, vibration_windows
from streams.stack import _pid_alive, free_ports

pytestmark = pytest.mark.integration

BIG = {"max_request_size": 8 * 2**20}  # the 5 MB poison must reach the broker
ISSUE_POISON = ("nested_header", "seq_2_70", "t0_2_70", "samples_3e38", "random_900kb", "message_5mb",
                "t0_int64_max", "stream_70k")


# ------------------------------------------------------------------------------------------------ harness
def _pipeline(stack) -> tuple:
    """Settings with topics, consumer group and database of this test's own on ``stack``."""
    from test_pipeline_integration import _private_pipeline

    return _private_pipeline(stack)


class Worker:
    """A real `sci-monitor worker` process with its own log and health port."""

    def __init__(self, s, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_ports(1)[0]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full = {**os.environ, "SCI_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "SCI_INFLUX_URL": s.influx_url,
                "SCI_INFLUX_DB": s.influx_db, "SCI_TOPIC_PREFIX": s.topic_prefix, "SCI_APP_ID": s.app_id,
                "SCI_DEVICE": "cpu", "SCI_HEALTH_PORT": str(self.port), "SCI_STARTUP_WAIT_S": "20",
                "SCI_INFLUX_TIMEOUT_S": "2", "SCI_SINK_MAX_BACKOFF_S": "2", **(env or {})}
        with log_path.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sci_monitor", "worker"], env=full, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_worker_ready(self.proc, log_path)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self) -> dict[tuple, float]:
        text = self.get("/metrics")[1].decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.metrics().items() if n == name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> tuple[int | None, float]:
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        return code, time.monotonic() - t


class Collector(threading.Thread):
    """Reads every record of a topic from the beginning (all partitions, no group) into ``records``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list = []
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 max_partition_fetch_bytes=16 * 2**20, fetch_max_bytes=64 * 2**20)
        try:
            parts = None
            while not parts and not self._halt.is_set():
                parts = consumer.partitions_for_topic(self.topic)
                time.sleep(0 if parts else 0.2)
            tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._halt.is_set():
                for batch in consumer.poll(timeout_ms=300).values():
                    self.records.extend(batch)
        finally:
            consumer.close()

    def wait(self, n: int, timeout_s: float, worker: Worker | None = None) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.records) < n and time.monotonic() < deadline:
            if worker is not None:
                assert worker.proc.poll() is None, worker.log()[-4000:]
            time.sleep(0.2)
        time.sleep(1.5)  # anything beyond n would be a duplicate
        return list(self.records)

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _collectors(s) -> dict[str, Collector]:
    return {role: Collector(s.kafka_bootstrap, s.topics[role]) for role in ("labels", "deadletter")}


def _points(sink) -> list[dict]:
    return sink.query("SELECT sp, seq FROM sci_window")


def _renamed(windows, prefix: str) -> list[SensorWindow]:
    return [dataclasses.replace(w, stream=f"{prefix}-{w.stream}") for w in windows]


def _real_windows(n_ecg: int, n_vib: int, prefix: str, start_ns: int) -> list[SensorWindow]:
    ecg = list(_take(ecg_windows("100", start_ns=start_ns), n_ecg))
    vib = list(_take(vibration_windows(105, hop=cwru.FRAME // 4, start_ns=start_ns), n_vib))
    assert (len(ecg), len(vib)) == (n_ecg, n_vib), "the recordings are shorter than the test needs"
    return _renamed(ecg + vib, prefix)


def _take(it, n):
    for _, x in zip(range(n), it, strict=False):
        yield x


def _extreme_valid(prefix: str) -> list[SensorWindow]:
    """Windows at the edges of every bound: they must be labelled and stored like any other."""
    rng = np.random.default_rng(7)
    ecg = np.clip(rng.standard_normal(256), -1, 1).astype(np.float32)
    rr = {"beat": [*BEAT[:-ECG_N], *ecg.tolist()]}  # the window as its own stream's template
    return [
        SensorWindow(f"{prefix}-tmax", "ecg", 360.0, TIME_MAX_NS, 0, ecg, features=rr),
        SensorWindow(f"{prefix}-tmin", "ecg", 360.0, TIME_MIN_NS, 0, ecg, features=rr),
        SensorWindow(f"{prefix}-amp", "ecg", 360.0, 10**18, 0, ecg * np.float32(1e9), features=rr),
        SensorWindow(f"{prefix}-rr", "ecg", 360.0, 10**18, 0, ecg,
                     features={"beat": [1e9, -1e9, 1e9, *BEAT[3:-ECG_N], *ecg.tolist()]}),
        SensorWindow(f"{prefix}-seqmax", "ecg", 360.0, 10**18, 2**63 - 1, ecg, features=rr),
        SensorWindow(f"{prefix}-ü:/@." + "x" * 100, "ecg", 360.0, 10**18, 0, ecg, features=rr, label="N" * 64),
        SensorWindow(f"{prefix}-meta", "ecg", 360.0, 10**18, 0, ecg, features=rr,
                     meta={f"k{i}": "v" * 1024 for i in range(32)}),
        SensorWindow(f"{prefix}-zero", "vibration", 12000.0, 10**18, 0, np.zeros(1024, np.float32)),
        SensorWindow(f"{prefix}-vamp", "vibration", 12000.0, 10**18, 0,
                     np.clip(rng.standard_normal(1024), -1, 1).astype(np.float32) * np.float32(1e9)),
    ]


def _hypothesis_frames(n: int) -> list[bytes]:
    """``n`` hostile frames drawn by hypothesis (derandomized: the same frames on every run)."""
    frames: list[bytes] = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(malformed_frame())
    def draw(frame: bytes) -> None:
        frames.append(frame)

    draw()
    return frames


def _assert_no_crash(worker: Worker) -> None:
    text = worker.log()
    assert worker.proc.poll() is None, text[-4000:]
    for needle in ("Traceback", "crashed", "Agent error", "Logging error"):
        assert needle not in text, text[text.index(needle) - 2000:text.index(needle) + 2000]


# ------------------------------------------------------------------------------------------------ fuzz
def test_fuzz_10000_hostile_and_valid_messages_exact_counts(local_stack, tmp_path):
    s, sink = _pipeline(local_stack)
    out = _collectors(s)
    worker = Worker(s, tmp_path / "worker.log")
    try:
        rng = np.random.default_rng(8)
        msgs: list[tuple[bytes, bytes, str, str | None]] = []  # key, value, expected, poison kind
        for j, data in enumerate(_hypothesis_frames(2600)):
            for copy in range(4):  # each drawn frame 4 times, under 4 stream ids
                i = 4 * j + copy
                value = personalize(data, i)
                expected = expected_outcome(value, i)
                if expected != "skip":
                    key = decode_window(value).key if expected == "label" else f"fz:{i}".encode()
                    msgs.append((key, value, expected, None))
        copies = {"message_5mb": 2, "random_900kb": 3, "nested_header": 5, "stream_70k": 5}
        k = 0
        for kind, make in POISON.items():
            for _ in range(copies.get(kind, 40)):
                k += 1
                msgs.append((f"poison:{k}".encode(), make(10_000_000 + k), "dead", kind))
        valid = _real_windows(600, 400, "fzok", time.time_ns()) + _extreme_valid("fzx")
        msgs += [(w.key, encode_window(w), "label", None) for w in valid]
        order = rng.permutation(len(msgs))
        msgs = [msgs[i] for i in order]
        n_label = sum(m[2] == "label" for m in msgs)
        n_dead = len(msgs) - n_label
        assert len(msgs) >= 10_000 and n_label >= 1000 and n_dead >= 8000, (len(msgs), n_label)

        acked = publish_raw(s.kafka_bootstrap, s.topics["windows"], [m[1] for m in msgs], [m[0] for m in msgs],
                            timeout_s=120, producer_config=BIG)
        assert acked == len(msgs)
        labels = out["labels"].wait(n_label, 420, worker)
        dead = out["deadletter"].wait(n_dead, 60, worker)
        _assert_no_crash(worker)

        # every valid window labelled exactly once, every invalid message dead-lettered exactly once
        label_keys = Counter(r.key for r in labels)
        assert set(label_keys) == {m[0] for m in msgs if m[2] == "label"} and max(label_keys.values()) == 1
        assert len(labels) == n_label
        letters = [(r.key, decode_dead_letter(r.value)) for r in dead]
        assert Counter(k for k, _ in letters) == Counter(m[0] for m in msgs if m[2] == "dead")
        assert len(letters) == n_dead
        kind_of = {m[0]: m[3] for m in msgs if m[3]}
        by_value = {m[0]: m[1] for m in msgs}
        for key, d in letters:
            assert d.reason and d.stage in STAGES and d.topic == s.topics["windows"]
            assert d.original_size == len(by_value[key]) and by_value[key].startswith(d.original)
            if key in kind_of:
                assert REASONS[kind_of[key]] in d.reason, (kind_of[key], d.reason)
        # stored exactly once: one point per labelled window, the edges of the time range included
        points = _points(sink)
        assert len(points) == n_label
        assert {p["time"] for p in points} >= {TIME_MAX_NS, TIME_MIN_NS}
        # the numbers the worker reports agree
        assert worker.total("sci_windows_total") == n_label
        assert worker.total("sci_dead_letters_total") == n_dead
        lag = {dict(labels)["partition"] for (name, labels) in worker.metrics() if name == "sci_consumer_lag"}
        assert lag == {"0", "1", "2", "3"}  # one gauge per input partition (values: see README, tansu)
        served = {(d["modality"], d["lead"], d["checkpoint"], d["device"])
                  for (name, labels), v in worker.metrics().items() if name == "sci_model_served" and v == 1
                  for d in [dict(labels)]}
        assert served == {(m, lead, ckpt, "cpu") for (m, lead), ckpt in s.served_models.items()}

        # still consuming
        more = _real_windows(0, 10, "after", time.time_ns() + 10**12)
        publish_raw(s.kafka_bootstrap, s.topics["windows"], [encode_window(w) for w in more], [w.key for w in more])
        assert len(out["labels"].wait(n_label + 10, 120, worker)) == n_label + 10
        _assert_no_crash(worker)
    finally:
        code, took = worker.stop()
        for c in out.values():
            c.close()
    assert code == 0 and took < 30, (code, took, worker.log()[-3000:])


def test_each_poison_of_the_issue_among_500_valid_windows(local_stack, tmp_path):
    s, sink = _pipeline(local_stack)
    out = _collectors(s)
    worker = Worker(s, tmp_path / "worker.log")
    try:
        valid = _real_windows(300, 200, "acc", time.time_ns())
        msgs = [(w.key, encode_window(w)) for w in valid]
        positions = np.random.default_rng(3).choice(len(msgs), len(ISSUE_POISON), replace=False)
        for pos, kind in sorted(zip(positions.tolist(), ISSUE_POISON, strict=True), reverse=True):
            msgs.insert(pos, (f"poison:{kind}".encode(), POISON[kind](1)))
        assert publish_raw(s.kafka_bootstrap, s.topics["windows"], [v for _, v in msgs], [k for k, _ in msgs],
                           producer_config=BIG) == len(msgs)
        labels = out["labels"].wait(500, 300, worker)
        dead = out["deadletter"].wait(len(ISSUE_POISON), 60, worker)
        assert len(labels) == 500 and len({r.key for r in labels}) == 500
        assert len(_points(sink)) == 500
        got = {r.key.decode().split(":", 1)[1]: decode_dead_letter(r.value) for r in dead}
        assert len(dead) == len(ISSUE_POISON) and set(got) == set(ISSUE_POISON)
        for kind, d in got.items():
            assert REASONS[kind] in d.reason, (kind, d.reason)
        assert got["message_5mb"].truncated and got["message_5mb"].original_size > 5 * 10**6
        more = _real_windows(0, 20, "after", time.time_ns() + 10**12)
        publish_raw(s.kafka_bootstrap, s.topics["windows"], [encode_window(w) for w in more], [w.key for w in more])
        assert len(out["labels"].wait(520, 120, worker)) == 520
        _assert_no_crash(worker)
    finally:
        worker.stop()
        for c in out.values():
            c.close()


# ------------------------------------------------------------------------------------------------ faults
SECRETS = {"password": "pw-7f3a91c2e5", "url_password": "urlpw-c0ffee4b1d", "kafka": "kpw-5e5e71c0de"}


def _replay(s, windows) -> None:
    summary = Replayer(s.kafka_bootstrap, s.topics["windows"], speed=0, progress=False).run([iter(windows)])
    assert summary.ok, str(summary)


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_influxdb_down_30s_and_sigterm_while_down_lose_nothing_and_leak_no_secret(private_stack, tmp_path):
    s, sink = _pipeline(private_stack)
    host = s.influx_url.split("://", 1)[1]
    env = {"SCI_INFLUX_URL": f"http://sci:{SECRETS['url_password']}@{host}", "SCI_INFLUX_USER": "sci",
           "SCI_INFLUX_PASSWORD": SECRETS["password"], "SCI_KAFKA_SASL_PASSWORD": SECRETS["kafka"]}
    out = _collectors(s)
    windows = _real_windows(0, 450, "down", time.time_ns())
    influx_pid = private_stack.influx.read_pid

    def stop_influx() -> None:
        pid = influx_pid()
        os.kill(pid, signal.SIGTERM)
        _wait(lambda: not _pid_alive(pid), 30, "influxd to stop")

    worker = Worker(s, tmp_path / "w1.log", env)
    second = None
    try:
        _replay(s, windows[:200])
        assert len(out["labels"].wait(200, 120, worker)) == 200
        assert worker.get("/readyz")[0] == 200

        # InfluxDB stopped for 30 s: readiness 503, a log line at once, retries counted, the batch held
        stop_influx()
        t_down = time.monotonic()
        _replay(s, windows[200:350])
        _wait(lambda: worker.get("/readyz")[0] == 503, 15, "/readyz 503")
        _wait(lambda: "storing" in worker.log() and "failed" in worker.log(), 15, "a storage failure log line")
        time.sleep(max(0.0, 30 - (time.monotonic() - t_down)))
        assert worker.total("sci_sink_retries_total") > 0
        assert len(out["labels"].records) == 200  # stored before published: nothing labelled while down
        private_stack.up(timeout=30)
        assert len(out["labels"].wait(350, 120, worker)) == 350
        _wait(lambda: worker.get("/readyz")[0] == 200, 15, "/readyz 200 after InfluxDB is back")
        assert len(_points(sink)) == 350

        # SIGTERM while InfluxDB is down: a bounded exit, the held batch not committed
        stop_influx()
        _replay(s, windows[350:])
        _wait(lambda: worker.log().count("failed (attempt") >= 3, 30, "retries of the held batch")
        code, took = worker.stop()
        assert code is not None and took < 30, (code, took)
        assert len(out["labels"].records) == 350
        private_stack.up(timeout=30)
        second = Worker(s, tmp_path / "w2.log", env)
        labels = out["labels"].wait(450, 180, second)
        assert {r.key for r in labels} == {w.key for w in windows}  # the abandoned windows came again
        assert len(_points(sink)) == 450
        assert out["deadletter"].records == []
    finally:
        for w in (worker, second):
            if w is not None:
                w.stop()
        for c in out.values():
            c.close()
    # no log of the run holds a secret it was given (worker logs and the services' logs)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log", private_stack.kafka.log_path, private_stack.influx.log_path]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    assert "sci:***@" in text  # the URL was logged, redacted
    for secret in SECRETS.values():
        assert secret not in text


def test_kill_9_mid_replay_and_a_broker_restart(private_stack, tmp_path):
    s, sink = _pipeline(private_stack)
    out = _collectors(s)
    windows = _real_windows(300, 300, "k9", time.time_ns())
    worker = Worker(s, tmp_path / "w1.log")
    second = None
    try:
        replay = threading.Thread(target=_replay, args=(s, windows))
        replay.start()
        _wait(lambda: len(out["labels"].records) >= 150, 120, "150 labels")
        worker.stop(signal.SIGKILL)
        replay.join(timeout=120)
        second = Worker(s, tmp_path / "w2.log")
        labels = out["labels"].wait(len(windows), 240, second)
        by_key: dict[bytes, set] = {}
        for r in labels:
            m = json.loads(r.value)
            by_key.setdefault(r.key, set()).add((m["label"], m["sp"], m["passes"], m["decision"]))
        assert set(by_key) == {w.key for w in windows}  # 0 lost
        assert all(len(v) == 1 for v in by_key.values())  # a redelivered window gets the identical decision
        assert len(_points(sink)) == len(windows)  # redelivery overwrote, did not duplicate

        # broker restart (the local broker keeps nothing): the worker rejoins and labels what comes next
        for c in out.values():
            c.close()
        pid = private_stack.kafka.read_pid()
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _pid_alive(pid), 30, "the broker to die")
        private_stack.up(timeout=30)
        _pipeline_topics(s)
        out = _collectors(s)
        fresh = _real_windows(0, 100, "k9b", time.time_ns() + 10**12)
        _replay(s, fresh)
        labels = out["labels"].wait(100, 180, second)
        assert {r.key for r in labels} >= {w.key for w in fresh}
        assert second.proc.poll() is None
    finally:
        for w in (worker, second):
            if w is not None:
                w.stop()
        for c in out.values():
            c.close()


def _pipeline_topics(s) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        for t, n in s.topic_partitions.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, n, 1)])
    finally:
        admin.close()
