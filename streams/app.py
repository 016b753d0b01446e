"""The Faust app: sensor windows in, SCI decisions out (labels, escalations, ΔSP alerts, dead letters, storage).

One agent consumes ``<prefix>.windows`` in micro-batches (``take_events(batch_size, within=batch_timeout_s)``) and
hands each batch to the :class:`Pipeline`, a ``faust.Service`` registered as a dependency of the app: it loads
the models and opens the sink in ``on_start`` (before the consumer joins its group) and closes them in
``on_stop`` (after the agents stopped). Per batch: decode and validate every message (malformed → dead letter
with the reason), classify the valid windows on the model thread (never on the event loop; the models stay on
the device for the life of the worker), then publish the outputs and store the decisions through the
:class:`~streams.sinks.WindowSink` (on the storage thread, under the one :class:`~streams.sinks.RetryPolicy`),
and only then let Faust ack the batch, so offsets are committed after the outputs exist (at-least-once).
Outputs are keyed ``stream:seq`` and stored points are timed at the window start, so a redelivered window
overwrites instead of duplicating. Scale-out is more workers in the same consumer group (``app_id``) over more
partitions of the input topic.

Plug points: ``runtime_factory`` (the models), ``sink_factory`` (storage: any :class:`~streams.sinks.WindowSink`)
and ``outputs`` (role -> Faust channel; the topics by default, in-memory channels in unit tests), all arguments
of :func:`create_worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust

from streams.contracts import (
    AlertMessage,
    ContractError,
    EscalationMessage,
    SensorWindow,
    dead_letter,
    decode_window,
)
from streams.runtime import ModelRuntime, WindowResult
from streams.settings import TOPIC_ROLES, Settings
from streams.sinks import RetryPolicy, SinkClosed, SinkError, WindowDecision, WindowSink

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
    sink_retries: int = 0
    labels: Counter = field(default_factory=Counter)
    latency_ms_sum: float = 0.0

    def line(self) -> str:
        dt = max(time.monotonic() - self.started, 1e-9)
        mean_lat = self.latency_ms_sum / self.windows if self.windows else 0.0
        return (f"windows {self.windows} ({self.windows / dt:.1f}/s), batches {self.batches}, "
                f"escalations {self.escalations}, alerts {self.alerts}, dead letters {self.dead_letters}, "
                f"sink retries {self.sink_retries}, mean latency {mean_lat:.0f} ms, labels {dict(self.labels)}")


def severity(delta_sp: float, warning: float, critical: float) -> str | None:
    """ΔSP alert level: "critical" ≥ critical, "warning" ≥ warning, else None.

    >>> severity(0.29, 0.3, 0.5) is None, severity(0.3, 0.3, 0.5), severity(0.5, 0.3, 0.5)
    (True, 'warning', 'critical')
    """
    if delta_sp >= critical:
        return "critical"
    if delta_sp >= warning:
        return "warning"
    return None


class Pipeline(faust.Service):
    """Per-batch processing of the worker; owns the model thread, the storage thread, the models and the sink.

    ``outputs``: role (``labels``, ``escalations``, ``alerts``, ``deadletter``) -> Faust channel or topic.
    """

    def __init__(self, settings: Settings, outputs: Mapping[str, faust.ChannelT],
                 runtime_factory: Callable[[], ModelRuntime], sink_factory: Callable[[], WindowSink],
                 retry: RetryPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings, self.outputs, self.retry = settings, outputs, retry
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._runtime_factory, self._sink_factory = runtime_factory, sink_factory
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="sci-model")
        self._sink_thread = ThreadPoolExecutor(1, thread_name_prefix="sci-sink")
        self._stopping = threading.Event()  # interrupts the storage retry wait on shutdown
        self.runtime: ModelRuntime | None = None
        self.sink: WindowSink | None = None
        self.tally = Tally()

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self.runtime = await loop.run_in_executor(self._model_thread, self._runtime_factory)
        log.info("models loaded on %s: %s", self.runtime.device, self.runtime.describe())
        self.sink = await loop.run_in_executor(self._sink_thread, self._sink_factory)
        log.info("storage: %s", self.sink.health()[1])

    async def on_stop(self) -> None:
        self._stopping.set()
        log.info("stopping: %s", self.tally.line())
        if self.sink is not None:
            self.sink.close()
        self._model_thread.shutdown(wait=False)
        self._sink_thread.shutdown(wait=False)

    @faust.Service.timer(10.0)
    async def _report(self) -> None:
        if self.tally.windows or self.tally.dead_letters:
            log.info("%s", self.tally.line())

    async def process(self, events: Sequence[Any]) -> None:
        """Decode, classify, publish and store one batch of Faust events; returns once all outputs are durable."""
        loop = asyncio.get_running_loop()
        windows: list[SensorWindow] = []
        origin: list[Any] = []
        sends: list[Awaitable[Any]] = []
        for ev in events:
            msg = ev.message
            try:
                windows.append(decode_window(msg.value))
                origin.append(msg)
            except ContractError as exc:
                sends.append(self._dead(msg, exc))
        results = await loop.run_in_executor(self._model_thread, self.runtime.classify, windows) if windows else []
        now = time.time()
        decisions: list[WindowDecision] = []
        stored_from: list[Any] = []
        for w, msg, res in zip(windows, origin, results, strict=True):
            if isinstance(res, str):
                sends.append(self._dead(msg, res, "ModelInputError"))
                continue
            d = WindowDecision(w, res, max(0.0, (now - msg.timestamp) * 1000.0), self.worker_id)
            decisions.append(d)
            stored_from.append(msg)
            sends.extend(self._publish(d))
        stored = loop.run_in_executor(self._sink_thread, self._store, decisions) if decisions else None
        await asyncio.gather(*[await s for s in sends])
        if stored is not None:
            try:
                await stored
            except SinkClosed:
                raise
            except SinkError as exc:  # rejected, or unavailable after a bounded number of attempts
                kind = type(exc).__name__
                await asyncio.gather(*[await self._dead(m, f"storage failed: {exc}", kind) for m in stored_from])
        for d in decisions:
            self._count(d.result, d.latency_ms)
        self.tally.batches += 1

    def _store(self, decisions: Sequence[WindowDecision]) -> None:
        def retried(attempt: int, exc: Exception) -> None:
            self.tally.sink_retries += 1

        self.retry.call(lambda: self.sink.write(decisions), f"storing {len(decisions)} decisions",
                        stop=self._stopping, on_retry=retried)

    def _dead(self, msg: Any, reason: str | Exception, error_type: str | None = None) -> Awaitable[Any]:
        self.tally.dead_letters += 1
        body = dead_letter(msg.value or b"", reason, msg.topic, msg.partition, msg.offset, msg.key, error_type)
        return self.outputs["deadletter"].send(key=msg.key, value=body)

    def _publish(self, d: WindowDecision) -> list[Awaitable[Any]]:
        s, r = self.settings, d.result
        label = d.label_message()
        key = label.key
        out = [self.outputs["labels"].send(key=key, value=label.to_json())]
        if r.abstained:
            out.append(self.outputs["escalations"].send(key=key, value=EscalationMessage.from_label(label).to_json()))
        level = severity(r.delta_sp, s.alert_threshold, s.alert_critical) if r.served else None
        if level is not None:
            threshold = s.alert_critical if level == "critical" else s.alert_threshold
            out.append(self.outputs["alerts"].send(
                key=key, value=AlertMessage.from_label(label, level, threshold).to_json()))
        return out

    def _count(self, r: WindowResult, latency_ms: float) -> None:
        t, s = self.tally, self.settings
        t.windows += 1
        t.escalations += r.abstained
        t.alerts += r.served and severity(r.delta_sp, s.alert_threshold, s.alert_critical) is not None
        t.labels[r.label] += 1
        t.latency_ms_sum += latency_ms


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


@dataclass(frozen=True)
class Worker:
    """One worker: the Faust app, its classifying agent and the pipeline the agent feeds."""

    app: faust.App
    agent: faust.types.AgentT
    pipeline: Pipeline


def create_worker(settings: Settings, runtime_factory: Callable[[], ModelRuntime] | None = None,
                  sink_factory: Callable[[], WindowSink] | None = None,
                  outputs: Callable[[faust.App], Mapping[str, faust.ChannelT]] | None = None) -> Worker:
    """The Faust app of one worker with its agent and pipeline. Plug points: ``runtime_factory`` (default: the
    ``models`` setting on ``settings.device``), ``sink_factory`` (default: InfluxDB), ``outputs(app)`` -> role ->
    channel (default: the output topics)."""
    app = faust.App(
        settings.app_id, broker=_broker_url(settings.kafka_bootstrap), value_serializer="raw",
        key_serializer="raw", store="memory://", web_enabled=False, topic_partitions=settings.input_partitions,
        topic_allow_declare=True, consumer_auto_offset_reset="earliest", producer_acks=-1,
        broker_session_timeout=10.0, broker_heartbeat_interval=2.0, broker_rebalance_timeout=10.0,
        broker_commit_every=settings.batch_size,
        broker_commit_interval=1.0,
    )
    names, parts = settings.topics, settings.topic_partitions
    topics = {role: app.topic(names[role], partitions=parts[names[role]], key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw") for role in TOPIC_ROLES}
    pipeline = Pipeline(
        settings,
        outputs(app) if outputs else {role: t for role, t in topics.items() if role != "windows"},
        runtime_factory or (lambda: _default_runtime(settings)),
        sink_factory or (lambda: _default_sink(settings)),
        RetryPolicy(settings.sink_max_attempts, settings.sink_backoff_s, settings.sink_max_backoff_s),
    )
    # started before the consumer joins the group (App.on_init_dependencies appends after it), stopped last
    app.add_dependency(pipeline)

    @app.agent(topics["windows"], name="classify")
    async def classify(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_timeout_s):
            await pipeline.process(events)

    return Worker(app, classify, pipeline)


def _default_runtime(settings: Settings) -> ModelRuntime:
    from models.device import resolve_device

    return ModelRuntime(resolve_device(settings.device), settings.served_models)


def _default_sink(settings: Settings) -> WindowSink:
    from streams.influx import make_sink

    return make_sink(settings)


class StartupError(RuntimeError):
    """The worker cannot start; the message is one line saying what is missing and what to do."""


def preflight(settings: Settings, timeout_s: float = 3.0) -> None:
    """Check what the worker needs before Faust starts (broker reachable, storage answering, checkpoints
    present); raises :class:`StartupError` with one line for the first thing missing."""
    servers = [h.strip().rsplit(":", 1) for h in settings.kafka_bootstrap.split(",") if h.strip()]
    if not any(_tcp_open(host, int(port), timeout_s) for host, port in servers):
        raise StartupError(f"no Kafka broker answers at {settings.kafka_bootstrap}; start one with "
                           "`sci-monitor stack up` or set SCI_KAFKA_BOOTSTRAP")
    try:
        sink = _default_sink(settings)
        try:
            ok, why = sink.health()
        finally:
            sink.close()
    except SinkError as exc:
        raise StartupError(str(exc)) from None
    if not ok:
        raise StartupError(f"{why}; start it with `sci-monitor stack up` or set SCI_INFLUX_URL")
    from models.checkpoint import available_checkpoints

    known = available_checkpoints()
    missing = sorted({name for name in settings.served_models.values()
                      if name not in known and not (name.endswith(".json") and os.path.isfile(name))})
    if missing:
        raise StartupError(f"checkpoints missing: {', '.join(missing)} (known: {', '.join(known)}); train them with "
                           "`sci-monitor train` or change SCI_MODELS")


def _tcp_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM (Faust's Worker handles the signals and the final commit)."""
    worker = create_worker(settings)
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
