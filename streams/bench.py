"""`sci-monitor bench pipeline`: the full worker against bare Faust pass-through on the real local stack (JSON out).

One run, one private local stack (tansu broker + influxd on free ports, state in a temporary directory):

1. Throughput. ``windows`` real sensor windows (DS2 MIT-BIH beats and CWRU frames, interleaved in time) are produced
   up front to an input topic. A bare Faust agent (same broker URL, serializers, offsets reset and
   ``take_events(batch_size, within=batch_timeout_s)`` as the worker, decoding nothing) counts them:
   ``passthrough_windows_per_s``. Then a real ``sci-monitor worker`` (another consumer group) processes the same
   backlog (decode, controller, four output topics, InfluxDB): ``pipeline_windows_per_s``, from the broker
   timestamps of its first and last label records. Both rates are sustained rates of draining a backlog.
2. Latency. A fresh worker on fresh topics gets windows paced at half the pipeline's sustained rate for
   ``latency_s`` seconds; per window, produce → stored latency = the label record's timestamp minus the input
   record's timestamp (both set by producers on this host). The worker stores a batch's InfluxDB points before it
   publishes its labels, so a label's timestamp is no earlier than its point was stored, and the point count is
   checked: ``latency_ms {p50, p95, p99}``. The labels' own ``latency_ms`` (input record → decision, taken when
   the worker builds the outputs, before it stores and publishes them) gives ``latency_decision_ms``; the
   difference between the two is storage and publishing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import heapq
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from models.data import mitdb
from streams.app import bound_fetch_wait
from streams.contracts import encode_window, window_key
from streams.demo import stop_process, wait_worker_ready
from streams.replay import ecg_windows, vibration_windows
from streams.settings import Settings, load_settings
from streams.stack import LocalStack, free_ports

CWRU_IDS = (97, 121, 108, 133)  # one recording per class: normal, ball, inner race, outer race
Log = Callable[[str], None]


def bench_messages(n: int, start_ns: int) -> list[tuple[bytes, bytes]]:
    """``n`` encoded (key, value) windows: DS2 (test-split) beats of every DS2 record and CWRU frames, by time."""
    streams = [ecg_windows(r, start_ns=start_ns) for r in mitdb.DS2]
    streams += [vibration_windows(i, start_ns=start_ns) for i in CWRU_IDS]
    merged = itertools.islice(heapq.merge(*streams, key=lambda w: w.t0_ns), n)
    msgs = [(window_key(w.stream, w.seq), encode_window(w)) for w in merged]
    if len(msgs) < n:
        raise ValueError(f"only {len(msgs)} windows available, {n} asked")
    return msgs


# ------------------------------------------------------------------------------------------------ Kafka helpers
def _producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, batch_size=256 * 1024,
                         max_request_size=4 * 1024 * 1024, client_id="sci-monitor-bench")


def _create_topics(s: Settings) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t, n, 1) for t, n in s.topic_partitions.items()])
    finally:
        admin.close()


def _influx(s: Settings, q: str, method: str = "GET") -> dict:
    r = requests.request(method, f"{s.influx_url}/query", params={"db": s.influx_db, "q": q}, timeout=30)
    r.raise_for_status()
    return r.json()


def _influx_count(s: Settings) -> int:
    series = _influx(s, "SELECT count(sp) FROM sci_window")["results"][0].get("series", [])
    return int(series[0]["values"][0][1]) if series else 0


def _records(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[Any]:
    """The first ``expected`` records of ``topic``, read from the beginning (counted: the local broker's end
    offsets are unreliable, see the local-stack notes)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=1000, max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {len(out)} of {expected} records after {timeout_s:.0f} s")
            out.extend(consumer)  # returns after 1 s without records
        return out
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------------ processes
def _env(s: Settings, health_port: int | None = None) -> dict[str, str]:
    return {**os.environ, "SCI_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "SCI_INFLUX_URL": s.influx_url,
            "SCI_INFLUX_DB": s.influx_db, "SCI_TOPIC_PREFIX": s.topic_prefix, "SCI_APP_ID": s.app_id,
            "SCI_DEVICE": s.device, "SCI_STATE_DIR": str(s.state_dir), "SCI_BATCH_SIZE": str(s.batch_size),
            "SCI_BATCH_TIMEOUT_S": str(s.batch_timeout_s), "SCI_FETCH_WAIT_S": str(s.fetch_wait_s),
            "SCI_HEALTH_PORT": str(health_port or free_ports(1)[0])}


def _spawn(args: list[str], s: Settings, log_path: Path, health_port: int | None = None) -> subprocess.Popen:
    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, *args], env=_env(s, health_port), stdout=log,
                                stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result after {timeout_s:.0f} s; see {log_path}")
        time.sleep(0.2)
    time.sleep(0.1)  # written in one call; let it land
    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class _Worker:
    proc: subprocess.Popen
    health_port: int


def _spawn_workers(s: Settings, work: Path, n_workers: int, name: str, timeout_s: float) -> list[_Worker]:
    """``n_workers`` real workers in one consumer group (``s.app_id``), each ready (group joined, models loaded)."""
    workers: list[_Worker] = []
    try:
        for i, port in enumerate(free_ports(n_workers)):
            workers.append(_Worker(_spawn(["-m", "sci_monitor", "worker"], s, work / f"{name}-{i}.log", port), port))
        for i, w in enumerate(workers):
            wait_worker_ready(w.proc, work / f"{name}-{i}.log", timeout_s=timeout_s)
    except BaseException:
        for w in workers:
            stop_process(w.proc)
        raise
    return workers


Pauses = dict[str, dict[str, float]]  # generation -> {"count", "total_ms", "over_50ms"}


def gc_pauses(metrics_text: str) -> Pauses:
    """Garbage-collection pauses in a worker's ``/metrics`` text (``sci_gc_pause_seconds``): generation ->
    ``{"count", "total_ms", "over_50ms"}`` (pauses longer than 50 ms, from the histogram's buckets).

    >>> text = ('# TYPE sci_gc_pause_seconds histogram\\n'
    ...         'sci_gc_pause_seconds_bucket{generation="2",le="0.05"} 1.0\\n'
    ...         'sci_gc_pause_seconds_bucket{generation="2",le="+Inf"} 3.0\\n'
    ...         'sci_gc_pause_seconds_count{generation="2"} 3.0\\n'
    ...         'sci_gc_pause_seconds_sum{generation="2"} 0.4\\n')
    >>> gc_pauses(text)
    {'2': {'count': 3.0, 'total_ms': 400.0, 'over_50ms': 2.0}}
    """
    from prometheus_client.parser import text_string_to_metric_families

    count, total_s, within_50ms = {}, {}, {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "sci_gc_pause_seconds":
            for sample in family.samples:
                g = sample.labels["generation"]
                if sample.name.endswith("_count"):
                    count[g] = sample.value
                elif sample.name.endswith("_sum"):
                    total_s[g] = sample.value
                elif sample.name.endswith("_bucket") and sample.labels["le"] == "0.05":
                    within_50ms[g] = sample.value
    return {g: {"count": n, "total_ms": round(total_s.get(g, 0.0) * 1e3, 1), "over_50ms": n - within_50ms.get(g, 0.0)}
            for g, n in count.items()}


def _gc_of(workers: list[_Worker]) -> Pauses | None:
    """The workers' garbage-collection pauses so far, summed (None when a worker does not answer)."""
    total: dict[str, Counter[str]] = {}
    for w in workers:
        try:
            text = requests.get(f"http://127.0.0.1:{w.health_port}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        for gen, v in gc_pauses(text).items():
            total.setdefault(gen, Counter()).update(v)
    return {g: dict(v) for g, v in total.items()}


def _gc_between(before: Pauses | None, after: Pauses | None) -> Pauses | None:
    """``after`` minus ``before``, per generation and field (None when either is unknown)."""
    if before is None or after is None:
        return None
    return {g: {k: round(x - before.get(g, {}).get(k, 0.0), 1) for k, x in v.items()} for g, v in after.items()}


def sustained_rate(timestamps_ms: np.ndarray, workers: np.ndarray) -> float:
    """Windows/s while every worker was producing labels: labels from the moment the last worker published its
    first label to the last label (one worker: from its first label to its last).

    >>> sustained_rate(np.array([0, 1000, 1500, 2000, 2500, 3500]), np.array(["a", "a", "b", "b", "a", "b"]))
    1.5
    """
    ts = np.asarray(timestamps_ms, dtype=np.float64) / 1000.0
    start = max(ts[np.asarray(workers) == w].min() for w in np.unique(workers))
    kept = np.sort(ts[ts >= start])
    return float((kept.size - 1) / max(kept[-1] - kept[0], 1e-3))


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far, from ``/proc`` (None where there is none).

    >>> process_cpu_s(-1) is None  # no such process
    True
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15 of stat)


def _worker_rate(s: Settings, work: Path, n: int, n_workers: int, timeout_s: float
                 ) -> tuple[float, int, float | None, Pauses | None]:
    """Sustained windows/s of ``n_workers`` real workers draining ``n`` produced windows, the InfluxDB point count,
    the workers' CPU time per window (ms, from ready to drained; None without ``/proc``) and their garbage-collection
    pauses over the same span (:func:`gc_pauses`; None when a worker's ``/metrics`` did not answer)."""
    workers = _spawn_workers(s, work, n_workers, s.app_id, timeout_s)
    try:
        cpu0, gc0 = [process_cpu_s(w.proc.pid) for w in workers], _gc_of(workers)
        labels = _records(s.kafka_bootstrap, s.topics["labels"], n, timeout_s)
        cpu1, gc1 = [process_cpu_s(w.proc.pid) for w in workers], _gc_of(workers)
    finally:
        for w in workers:
            stop_process(w.proc)
    who = np.array([json.loads(r.value)["worker"] for r in labels])
    cpu = None if None in cpu0 + cpu1 else 1000.0 * (sum(cpu1) - sum(cpu0)) / n
    return (sustained_rate(np.array([r.timestamp for r in labels]), who), _influx_count(s), cpu,
            _gc_between(gc0, gc1))


# ------------------------------------------------------------------------------------------------ phases
def _throughput(s: Settings, work: Path, msgs: list[tuple[bytes, bytes]], n_workers: int, timeout_s: float,
                log: Log) -> dict[str, Any]:
    _create_topics(s)
    producer = _producer(s.kafka_bootstrap)
    for k, v in msgs:
        producer.send(s.topics["windows"], key=k, value=v)
    producer.flush(timeout=120)
    producer.close()
    n = len(msgs)
    log(f"[bench] {n} windows produced to {s.topics['windows']}; bare Faust pass-through ...")
    result_path = work / "passthrough.json"
    pt = dataclasses.replace(s, app_id=f"{s.app_id}-passthrough")
    log_path = work / "passthrough.log"
    proc = _spawn(["-m", "streams.bench", "passthrough", "--windows", str(n), "--result", str(result_path)], pt,
                  log_path)
    try:
        passthrough = _wait_for(result_path, proc, log_path, timeout_s)
    finally:
        stop_process(proc)
    log(f"[bench] pass-through {passthrough['windows_per_s']:.0f} windows/s; full pipeline ({n_workers} "
        f"worker{'s' if n_workers > 1 else ''}) ...")
    rate, stored, cpu_ms, gc_ms = _worker_rate(dataclasses.replace(s, app_id=f"{s.app_id}-pipeline"), work, n,
                                               n_workers, timeout_s)
    log(f"[bench] pipeline {rate:.0f} windows/s, {stored} points stored")
    return {"passthrough_windows_per_s": passthrough["windows_per_s"], "pipeline_windows_per_s": rate,
            "pipeline_over_passthrough": rate / passthrough["windows_per_s"], "influx_points_throughput": stored,
            "pipeline_cpu_ms_per_window": cpu_ms, "gc_pauses_throughput": gc_ms}


def _latency(s: Settings, work: Path, msgs: list[tuple[bytes, bytes]], rate: float, seconds: float,
             n_workers: int, timeout_s: float, log: Log) -> dict[str, Any]:
    _create_topics(s)
    _influx(s, f'CREATE DATABASE "{s.influx_db}"', method="POST")
    n = max(1, min(len(msgs), round(rate * seconds)))
    workers = _spawn_workers(s, work, n_workers, "latency-worker", timeout_s)
    gc0 = _gc_of(workers)
    try:
        log(f"[bench] latency: {n} windows at {rate:.0f} windows/s ...")
        producer = _producer(s.kafka_bootstrap)
        start = time.monotonic()
        for i, (k, v) in enumerate(msgs[:n]):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            producer.send(s.topics["windows"], key=k, value=v)
        producer.flush(timeout=60)
        producer.close()
        labels = _records(s.kafka_bootstrap, s.topics["labels"], n, timeout_s)
        gc_ms = _gc_between(gc0, _gc_of(workers))
    finally:
        for w in workers:
            stop_process(w.proc)
    inputs = {r.key: r.timestamp for r in _records(s.kafka_bootstrap, s.topics["windows"], n, timeout_s)}
    matched = [r for r in labels if r.key in inputs]
    lat = np.array([r.timestamp - inputs[r.key] for r in matched], dtype=np.float64)
    decided = np.array([json.loads(r.value)["latency_ms"] for r in matched], dtype=np.float64)
    return {"latency_ms": percentiles(lat), "latency_decision_ms": percentiles(decided),
            "latency_windows": int(lat.size), "latency_rate_windows_per_s": rate,
            "influx_points_latency": _influx_count(s), "gc_pauses_latency": gc_ms}


def percentiles(x: np.ndarray) -> dict[str, float]:
    """``{"p50", "p95", "p99"}`` of x (numpy's linear interpolation).

    >>> percentiles(np.arange(101.0))
    {'p50': 50.0, 'p95': 95.0, 'p99': 99.0}
    """
    return dict(zip(("p50", "p95", "p99"), (float(v) for v in np.percentile(x, [50, 95, 99])), strict=True))


def bench_pipeline(windows: int = 20_000, latency_s: float = 30.0, batch_size: int | None = None,
                   workers: int = 1, timeout_s: float = 600.0, log: Log = lambda _: None,
                   batch_timeout_s: float | None = None, fetch_wait_s: float | None = None) -> dict[str, Any]:
    """The whole pipeline benchmark on a private local stack; returns the JSON-able result. ``workers`` worker
    processes share the pipeline's consumer group (at most ``input_partitions`` of them get partitions);
    ``batch_size``, ``batch_timeout_s`` and ``fetch_wait_s`` (None: the settings' defaults) apply to the workers and
    the pass-through alike."""
    base = load_settings(env={})
    if not 1 <= workers <= base.input_partitions:
        raise ValueError(f"workers must be 1..{base.input_partitions} (the input topic's partitions), got {workers}")
    given = {"batch_size": batch_size, "batch_timeout_s": batch_timeout_s, "fetch_wait_s": fetch_wait_s}
    base = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    base = dataclasses.replace(base, device="cpu" if base.device == "auto" else base.device)
    log(f"[bench] encoding {windows} windows ...")
    msgs = bench_messages(windows, time.time_ns())
    with tempfile.TemporaryDirectory(prefix="sci-bench-") as tmp:
        work = Path(tmp)
        kafka_port, influx_port, rpc_port = free_ports(3)
        stack = LocalStack(base, state_dir=work / "stack", kafka_port=kafka_port, influx_port=influx_port,
                           influx_rpc_port=rpc_port)
        try:
            stack.up(timeout=60)
            s = stack.settings
            tag = uuid.uuid4().hex[:6]
            tp = _throughput(dataclasses.replace(s, topic_prefix=f"bt{tag}", app_id=f"bench-{tag}"), work, msgs,
                             workers, timeout_s, log)
            lat_settings = dataclasses.replace(s, topic_prefix=f"bl{tag}", app_id=f"bench-lat-{tag}",
                                               influx_db=f"lat_{tag}", influx_bucket=f"lat_{tag}")
            lat = _latency(lat_settings, work, msgs, tp["pipeline_windows_per_s"] / 2, latency_s, workers, timeout_s,
                           log)
        finally:
            stack.down()
    return {
        "benchmark": "pipeline",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": base.device},
        "settings": {"windows": windows, "latency_s": latency_s, "workers": workers, "batch_size": base.batch_size,
                     "batch_timeout_s": base.batch_timeout_s, "fetch_wait_s": base.fetch_wait_s,
                     "input_partitions": base.input_partitions,
                     "data": "DS2 MIT-BIH beats (all 22 records) + CWRU frames (files 97, 121, 108, 133), by time"},
        **tp, **lat,
    }


# ------------------------------------------------------------------------------------------------ pass-through
def passthrough_main(windows: int, result: Path) -> None:
    """Run a bare Faust agent on ``settings.topics["windows"]`` (env settings) until it has seen ``windows`` events;
    writes {"windows", "seconds", "windows_per_s"} to ``result`` (timed from its first batch to the last)."""
    import faust

    s = load_settings()
    (s.state_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(  # the worker's consumer settings (streams/app.py create_worker), minus everything else
        s.app_id, broker=";".join(f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()),
        value_serializer="raw", key_serializer="raw", store="memory://", web_enabled=False,
        datadir=str(s.state_dir / "faust" / s.app_id),
        topic_partitions=s.input_partitions, topic_allow_declare=False, consumer_auto_offset_reset="earliest",
        broker_commit_every=s.batch_size, broker_commit_interval=1.0)
    bound_fetch_wait(app, s.fetch_wait_s)  # the worker's consumer settings
    topic = app.topic(s.topics["windows"], key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    state = {"seen": 0, "first": None, "first_batch": 0}

    @app.agent(topic, name="passthrough")
    async def count(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_size, within=s.batch_timeout_s):
            now = time.monotonic()
            if state["first"] is None:
                state["first"], state["first_batch"] = now, len(events)
            state["seen"] += len(events)
            if state["seen"] >= windows and not result.exists():
                secs = max(now - state["first"], 1e-6)
                result.write_text(json.dumps({"windows": state["seen"], "seconds": secs,
                                              "windows_per_s": (state["seen"] - state["first_batch"]) / secs}))

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare Faust pass-through agent of `sci-monitor bench pipeline`")
    parser.add_argument("mode", choices=["passthrough"])
    parser.add_argument("--windows", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    a = parser.parse_args()
    passthrough_main(a.windows, a.result)
