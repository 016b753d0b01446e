"""`make demo`: the main job end to end on this machine, with a live summary.

Starts the local stack (broker + InfluxDB) and one worker, replays DS2 (test-split) MIT-BIH records and CWRU
recordings as live streams at ``speed`` × real time for ``duration_s``, follows the output topics the way a
subscriber would, and prints windows/s, labels, escalations, alerts and latency as they happen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from models.checkpoint import available_checkpoints
from streams import modalities
from streams.contracts import SensorWindow
from streams.replay import Replayer, ecg_windows, vibration_windows
from streams.settings import Settings
from streams.stack import LocalStack

ECG_RECORDS = ("100", "105", "119", "208", "213", "233")  # DS2: never seen in training
CWRU_IDS = (97, 121, 108, 133)  # one recording per class: normal, ball, inner race, outer race
VIB_HOP = 4 * 1024  # samples between vibration frames (one 1024-sample frame every 4096 samples)


def _looped_vibration(file_id: int, start_ns: int) -> Iterator[SensorWindow]:
    """A CWRU recording (about 10 s) played in a loop, as a machine that keeps running: seq and time continue."""
    seq, t0 = 0, start_ns
    while True:
        last = None
        for w in vibration_windows(file_id, hop=VIB_HOP, start_ns=t0):
            yield dataclasses.replace(w, seq=seq)
            seq, last = seq + 1, w
        if last is None:
            return
        t0 = last.t0_ns + int(VIB_HOP * 1e9 / last.fs)


def _until(deadline: float, windows: Iterable) -> Iterator:
    for w in windows:
        if time.monotonic() >= deadline:
            return
        yield w


class Follower(threading.Thread):
    """Consumes the output topics from the demo's start and keeps the running numbers."""

    def __init__(self, s: Settings, since_ms: int) -> None:
        super().__init__(daemon=True)
        self.s, self.since_ms = s, since_ms  # only outputs produced (Kafka timestamp) after the demo started
        self.labels: Counter = Counter()
        self.decisions = Counter()
        self.severity = Counter()
        self.latency: list[float] = []
        self.correct = self.known = self.dead = 0
        self.first = self.last = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        # no consumer group: assigned partitions from the beginning, filtered by window time below
        from streams.security import kafka_client_config

        c = KafkaConsumer(bootstrap_servers=self.s.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                          **kafka_client_config(self.s))
        topics = self.s.topics
        parts = [TopicPartition(topics[role], p) for role in ("labels", "alerts", "deadletter")
                 for p in sorted(c.partitions_for_topic(topics[role]) or ())]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        try:
            while not self.stop.is_set():
                for tp, records in c.poll(timeout_ms=500).items():
                    for r in records:
                        if r.timestamp >= self.since_ms:
                            self._take(tp.topic, r.value)
        finally:
            c.close()

    def _take(self, topic: str, value: bytes) -> None:
        m = json.loads(value)
        if topic == self.s.topics["deadletter"]:
            self.dead += 1
            return
        if topic == self.s.topics["alerts"]:
            self.severity[m["severity"]] += 1
            return
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.labels[(m["modality"], m["label"])] += 1
        self.decisions[m["decision"]] += 1
        self.latency.append(m["latency_ms"])
        if m["truth"] is not None:
            self.known += 1
            self.correct += bool(m["correct"])

    @property
    def windows(self) -> int:
        return sum(self.decisions.values())

    def table(self, replayed: int, elapsed: float) -> Table:
        t = Table(title=f"sci-monitor demo — {elapsed:.0f} s", show_header=False)
        t.add_column(style="bold")
        t.add_column()
        rate = self.windows / max(self.last - self.first, 1e-9) if self.windows > 1 else 0.0
        lat = np.percentile(self.latency, [50, 95]) if self.latency else [0, 0]
        t.add_row("windows replayed / classified", f"{replayed} / {self.windows}")
        t.add_row("throughput", f"{rate:.1f} windows/s")
        for modality in modalities.names():
            counts = {lab: n for (mod, lab), n in sorted(self.labels.items()) if mod == modality}
            t.add_row(f"labels ({modality})", ", ".join(f"{k} {v}" for k, v in counts.items()) or "—")
        t.add_row("escalations (abstained)", str(self.decisions["abstained"]))
        t.add_row("ΔSP alerts", f"warning {self.severity['warning']}, critical {self.severity['critical']}")
        t.add_row("latency p50 / p95", f"{lat[0]:.0f} / {lat[1]:.0f} ms")
        acc = f"{self.correct / self.known:.1%} of {self.known}" if self.known else "—"
        t.add_row("agreement with reference labels", acc)
        t.add_row("dead letters", str(self.dead))
        return t


def _worker_env(s: Settings) -> dict[str, str]:
    return {**os.environ, "SCI_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "SCI_INFLUX_URL": s.influx_url,
            "SCI_INFLUX_DB": s.influx_db, "SCI_TOPIC_PREFIX": s.topic_prefix, "SCI_APP_ID": s.app_id,
            "SCI_DEVICE": s.device, "SCI_STATE_DIR": str(s.state_dir), "SCI_MODELS": s.models}


def run_demo(settings: Settings, duration_s: float = 60.0, speed: float = 10.0, console: Console | None = None
             ) -> int:
    con = console or Console()
    missing = [n for n in settings.served_models.values() if n not in available_checkpoints()]
    if missing:
        raise RuntimeError(f"checkpoints missing: {missing}; run `sci-monitor train --dataset all`")
    con.print("starting the local stack (tansu broker + InfluxDB) ...")
    stack = LocalStack(settings)
    con.print(str(stack.up()))
    s = stack.settings
    log_path = s.state_dir / "worker.log"
    con.print(f"starting a worker (log: {log_path}) ...")
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("a") as log:
        worker = subprocess.Popen([sys.executable, "-m", "sci_monitor", "worker"], env=_worker_env(s), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    wait_worker_ready(worker, log_path, log_offset)
    start_ns, t0 = time.time_ns(), time.monotonic()
    deadline = t0 + duration_s
    streams = [_until(deadline, ecg_windows(r, start_ns=start_ns)) for r in ECG_RECORDS]
    streams += [_until(deadline, _looped_vibration(i, start_ns)) for i in CWRU_IDS]
    follower = Follower(s, start_ns // 1_000_000)
    follower.start()
    from streams.security import kafka_client_config

    replayer = Replayer(s.kafka_bootstrap, s.topics["windows"], speed=speed, progress=False,
                        producer_config=kafka_client_config(s))
    feeder = threading.Thread(target=replayer.run, args=(streams,), daemon=True)
    con.print(f"replaying {len(ECG_RECORDS)} ECG and {len(CWRU_IDS)} vibration streams at {speed:g}× real time "
              f"for {duration_s:.0f} s ...")
    feeder.start()
    try:
        with Live(follower.table(0, 0), console=con, refresh_per_second=2) as live:
            while feeder.is_alive() or (follower.windows < replayer.sent_so_far
                                        and time.monotonic() < deadline + 60):
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with code {worker.returncode}; see {log_path}")
                live.update(follower.table(replayer.sent_so_far, time.monotonic() - t0))
                time.sleep(0.5)
            live.update(follower.table(replayer.sent_so_far, time.monotonic() - t0))
    finally:
        follower.stop.set()
        stop_process(worker, timeout_s=30.0)
    con.print(
        f"\nDone. The local stack is still running:\n"
        f"  InfluxDB  {s.influx_url}  database '{s.influx_db}', measurement 'sci_window', e.g.\n"
        f"            curl -G '{s.influx_url}/query' --data-urlencode \"db={s.influx_db}\" --data-urlencode "
        f"\"q=SELECT count(sp) FROM sci_window GROUP BY modality, decision\"\n"
        f"  Kafka     {s.kafka_bootstrap}  topics {', '.join(s.topics.values())}\n"
        f"  worker log {log_path}\n"
        f"Stop it with: .venv/bin/sci-monitor stack down")
    return 0 if follower.windows > 0 else 1


def stop_process(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM ``proc`` (a worker: it finishes or abandons its batch), SIGKILL it after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_worker_ready(worker: subprocess.Popen, log_path: Path, offset: int = 0, timeout_s: float = 120.0) -> None:
    """Until this worker has joined its group and loaded its models (both are logged after ``offset``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if "Worker]: Ready" in text and "models loaded" in text:  # Faust logs "[^<worker class>]: Ready"
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}; see {log_path}")
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready after {timeout_s:.0f} s; see {log_path}")
