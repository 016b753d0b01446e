"""The Faust app: sensor windows in, SCI decisions out (labels, escalations, ΔSP alerts, dead letters, InfluxDB).

One agent consumes ``<prefix>.windows`` in micro-batches (``take_events(batch_size, within=batch_timeout_s)``).
Per batch: decode and validate every message (malformed → dead letter with the reason), classify the valid windows
on the model thread (never on the event loop; the models stay on the device for the life of the worker), then
publish the outputs and write the InfluxDB points, and only then let Faust ack the batch, so offsets are committed
after the outputs exist (at-least-once). Outputs are keyed ``stream:seq`` and Influx points are timed at the window
start, so a redelivered window overwrites instead of duplicating. Scale-out is more workers in the same consumer
group (``app_id``) over more partitions of the input topic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust

from streams.contracts import (
    AlertMessage,
    ContractError,
    EscalationMessage,
    LabelMessage,
    SensorWindow,
    dead_letter,
    decode_window,
)
from streams.influx import InfluxSink, SinkError, make_sink, window_points
from streams.runtime import ModelRuntime, WindowResult
from streams.settings import Settings

log = logging.getLogger("sci_monitor.worker")


@dataclass
class Tally:
    """What this worker has done since it started (for logs and the demo summary)."""

    started: float = field(default_factory=time.monotonic)
    windows: int = 0
    batches: int = 0
    escalations: int = 0
    alerts: int = 0
    dead_letters: int = 0
    labels: Counter = field(default_factory=Counter)
    latency_ms_sum: float = 0.0

    def line(self) -> str:
        dt = max(time.monotonic() - self.started, 1e-9)
        mean_lat = self.latency_ms_sum / self.windows if self.windows else 0.0
        return (f"windows {self.windows} ({self.windows / dt:.1f}/s), batches {self.batches}, "
                f"escalations {self.escalations}, alerts {self.alerts}, dead letters {self.dead_letters}, "
                f"mean latency {mean_lat:.0f} ms, labels {dict(self.labels)}")


def severity(delta_sp: float, warning: float, critical: float) -> str | None:
    """ΔSP alert level: "critical" ≥ critical, "warning" ≥ warning, else None."""
    if delta_sp >= critical:
        return "critical"
    if delta_sp >= warning:
        return "warning"
    return None


class Pipeline:
    """Per-batch processing shared by the agent and tests; owns the model thread and the sink thread."""

    def __init__(self, settings: Settings, runtime_factory: Callable[[], ModelRuntime],
                 sink_factory: Callable[[], InfluxSink]) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._runtime_factory, self._sink_factory = runtime_factory, sink_factory
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="sci-model")
        self._sink_thread = ThreadPoolExecutor(1, thread_name_prefix="sci-influx")
        self.runtime: ModelRuntime | None = None
        self.sink: InfluxSink | None = None
        self.tally = Tally()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.runtime is None:
            self.runtime = await loop.run_in_executor(self._model_thread, self._runtime_factory)
            log.info("models loaded on %s: %s", self.runtime.device,
                     {m: s.card.name for m, s in self.runtime.models.items()})
        if self.sink is None:
            self.sink = await loop.run_in_executor(self._sink_thread, self._sink_factory)

    async def process(self, events: Sequence[Any], topics: dict[str, faust.TopicT]) -> None:
        """Decode, classify, publish and record one batch of Faust events; returns once all outputs are durable.

        ``start()`` must have run (the agent calls it before its first batch)."""
        loop = asyncio.get_running_loop()
        windows: list[SensorWindow] = []
        origin: list[Any] = []
        sends: list[Any] = []
        for ev in events:
            msg = ev.message
            try:
                windows.append(decode_window(msg.value))
                origin.append(msg)
            except ContractError as exc:
                sends.append(self._dead(topics, msg, exc))
        results = await loop.run_in_executor(self._model_thread, self.runtime.classify, windows) if windows else []
        now = time.time()
        rows: dict[str, list[Any]] = {k: [] for k in (
            "stream", "modality", "model", "decision", "predicted", "sp", "delta_sp", "passes", "max_prob",
            "latency_ms", "seq", "t0_ns", "truth")}
        for w, msg, res in zip(windows, origin, results, strict=True):
            if isinstance(res, str):
                sends.append(self._dead(topics, msg, res, "ModelInputError"))
                continue
            sends.extend(self._publish(topics, w, res, max(0.0, (now - msg.timestamp) * 1000.0), rows))
        delivered = asyncio.gather(*[await s for s in sends])
        written = loop.run_in_executor(self._sink_thread, self._write_points, rows) if rows["seq"] else None
        await delivered
        if written is not None:
            await written
        self.tally.batches += 1

    def _dead(self, topics: dict[str, faust.TopicT], msg: Any, reason: str | Exception,
              error_type: str | None = None) -> Any:
        self.tally.dead_letters += 1
        body = dead_letter(msg.value or b"", reason, msg.topic, msg.partition, msg.offset, msg.key, error_type)
        return topics["deadletter"].send(key=msg.key, value=body)

    def _publish(self, topics: dict[str, faust.TopicT], w: SensorWindow, r: WindowResult, latency_ms: float,
                 rows: dict[str, list[Any]]) -> list[Any]:
        s = self.settings
        label = LabelMessage(
            stream=w.stream, modality=w.modality, seq=w.seq, t0_ns=w.t0_ns, model=r.model, label=r.label,
            probs={c: round(float(p), 6) for c, p in zip(r.classes, r.probs, strict=True)},
            sp=round(r.sp, 6), delta_sp=round(r.delta_sp, 6), passes=r.passes,
            decision="abstained" if r.abstained else "stopped", reason=r.reason, truth=w.label,
            correct=None if w.label is None else w.label == r.label, latency_ms=round(latency_ms, 3),
            worker=self.worker_id)
        key = label.key
        out = [topics["labels"].send(key=key, value=label.to_json())]
        if r.abstained:
            self.tally.escalations += 1
            out.append(topics["escalations"].send(key=key, value=EscalationMessage.from_label(label).to_json()))
        level = severity(r.delta_sp, s.alert_threshold, s.alert_critical)
        if level is not None:
            self.tally.alerts += 1
            threshold = s.alert_critical if level == "critical" else s.alert_threshold
            out.append(topics["alerts"].send(key=key, value=AlertMessage.from_label(label, level, threshold).to_json()))
        self.tally.windows += 1
        self.tally.labels[r.label] += 1
        self.tally.latency_ms_sum += latency_ms
        for k, v in (("stream", w.stream), ("modality", w.modality), ("model", r.model),
                     ("decision", label.decision), ("predicted", r.label), ("sp", r.sp), ("delta_sp", r.delta_sp),
                     ("passes", r.passes), ("max_prob", float(r.probs.max())), ("latency_ms", latency_ms),
                     ("seq", w.seq), ("t0_ns", w.t0_ns), ("truth", w.label)):
            rows[k].append(v)
        return out

    def _write_points(self, rows: dict[str, list[Any]]) -> None:
        """Write until InfluxDB takes the batch: holding the batch (and its offsets) is how nothing gets lost."""
        lines = window_points(rows)
        delay = self.settings.influx_backoff_s
        while True:
            try:
                self.sink.write(lines)
                return
            except SinkError as exc:
                log.warning("InfluxDB write failed (%s); retrying in %.1f s, batch held", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
        self._model_thread.shutdown(wait=False)
        self._sink_thread.shutdown(wait=False)


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def create_app(settings: Settings, runtime_factory: Callable[[], ModelRuntime] | None = None,
               sink_factory: Callable[[], InfluxSink] | None = None) -> faust.App:
    """The Faust app of one worker; ``app.pipeline`` exposes its Pipeline (tally, sink counters)."""
    from models.device import resolve_device

    app = faust.App(
        settings.app_id, broker=_broker_url(settings.kafka_bootstrap), value_serializer="raw",
        key_serializer="raw", store="memory://", web_enabled=False, topic_partitions=settings.input_partitions,
        topic_allow_declare=True, consumer_auto_offset_reset="earliest", producer_acks=-1,
        broker_session_timeout=10.0, broker_heartbeat_interval=2.0, broker_rebalance_timeout=10.0,
        broker_commit_every=settings.batch_size,
        broker_commit_interval=1.0,
    )
    names, parts = settings.topics, settings.topic_partitions
    topics = {role: app.topic(name, partitions=parts[name], key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw") for role, name in names.items()}
    pipeline = Pipeline(
        settings,
        runtime_factory or (lambda: ModelRuntime(resolve_device(settings.device))),
        sink_factory or (lambda: make_sink(settings)),
    )
    app.pipeline = pipeline  # type: ignore[attr-defined]

    @app.agent(topics["windows"], name="classify")
    async def classify(stream: faust.StreamT) -> None:
        await pipeline.start()  # load the models before the first batch, not during it
        async for events in stream.take_events(settings.batch_size, within=settings.batch_timeout_s):
            await pipeline.process(events, topics)

    @app.timer(interval=10.0)
    async def report() -> None:
        if pipeline.tally.windows or pipeline.tally.dead_letters:
            log.info("%s", pipeline.tally.line())

    @app.on_before_shutdown.connect
    async def _close(app_: faust.App, **kwargs: Any) -> None:
        log.info("stopping: %s", pipeline.tally.line())
        pipeline.close()

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM (Faust's Worker handles the signals and the final commit)."""
    app = create_app(settings)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
