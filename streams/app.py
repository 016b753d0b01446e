"""The Faust app: sensor windows in, SCI decisions out (labels, escalations, ΔSP alerts, dead letters, storage).

One agent consumes ``<prefix>.windows`` in micro-batches (``take_events(batch_size, within=batch_timeout_s)``) and
hands each batch to the :class:`Pipeline`, a ``faust.Service`` registered as a dependency of the app: it loads
the models and opens the sink in ``on_start`` (before the consumer joins its group) and closes them in
``on_stop`` (after the agents stopped). Per batch: decode and validate every message (malformed → dead letter
with the reason) and classify the valid windows on the model thread (never on the event loop; the models stay on
the device for the life of the worker), then store the decisions through the :class:`~streams.sinks.WindowSink`
(on the storage thread, under the one :class:`~streams.sinks.RetryPolicy`) and publish the outputs. Batch k+1 is
decoded and classified while batch k's outputs are written; each batch is withheld from Faust's ack when taken and
released once its outputs exist, in the order taken, so offsets are committed after the outputs exist
(at-least-once) and never past a batch without them.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.contracts import (
    AlertMessage,
    ContractError,
    EscalationMessage,
    SensorWindow,
    dead_letter,
    decode_window,
)
from streams.health import Health, influx_ping_check, tcp_check, wait_for
from streams.heap import GcPauses, freeze_startup_heap
from streams.isolation import bisect, non_finite, release, withheld
from streams.runtime import ModelRuntime, WindowResult
from streams.security import check_secrets, faust_credentials, install_log_redaction, redact, secret_values
from streams.settings import TOPIC_ROLES, Settings
from streams.sinks import (
    RetryPolicy,
    SinkClosed,
    SinkRejected,
    SinkUnavailable,
    WindowDecision,
    WindowSink,
    alert_levels,
)
from streams.trust import TrustService

log = logging.getLogger("sci_monitor.worker")
TAIL_STOP_S = 10.0  # at shutdown, how long the last batch's outputs may take before they are abandoned (s)


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


class OutputsUnavailable(RuntimeError):
    """An output or dead letter could not be published: the batch cannot be acknowledged."""


@dataclass(eq=False)
class _Item:
    """One event of a batch on its way through the stages; ends with outputs or with a dead letter."""

    msg: Any
    window: SensorWindow | None = None
    result: WindowResult | None = None
    decision: WindowDecision | None = None
    outputs: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (role, key, value)
    dead: tuple[str, str, str] | None = None  # (reason, error_type, stage)

    def kill(self, reason: str | BaseException, error_type: str, stage: str) -> None:
        if self.dead is None:
            self.dead = (str(reason), error_type, stage)
            self.outputs = []


class Pipeline(faust.Service):
    """Per-batch processing of the worker; owns the model thread, the storage thread, the models and the sink.

    ``outputs``: role (``labels``, ``escalations``, ``alerts``, ``deadletter``) -> Faust channel or topic.
    ``health``: its metrics are updated per batch; its checks (models, broker, sink) and HTTP server start with
    the pipeline when ``settings.health_port`` is set.

    Isolation (issue 8): each stage (decode, model_check, classify, output, store, send) fails per window: the
    window gets a dead letter saying the stage and the reason, the others go on. Classification and storage
    bisect their sub-batch to find the windows that make them fail (a model error, a point the store rejects);
    storage that is unavailable (connection, timeout, 5xx) is retried by the retry policy while the batch and its
    offsets are held. An unexpected error anywhere (a bug) halves the batch until it is down to the window that
    causes it. A batch abandoned because the worker stops is withheld from Faust's acks (not committed).

    ``freeze_heap`` (a worker process, :func:`run_worker`): once the models and the sink are loaded, the start-up
    heap is frozen out of garbage collection (:mod:`streams.heap`). Collection pauses are measured either way.
    """

    def __init__(self, settings: Settings, outputs: Mapping[str, faust.ChannelT],
                 runtime_factory: Callable[[], ModelRuntime], sink_factory: Callable[[], WindowSink],
                 retry: RetryPolicy, health: Health | None = None, freeze_heap: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._freeze_heap = freeze_heap
        self._gc_pauses: GcPauses | None = None
        self.settings, self.outputs, self.retry = settings, outputs, retry
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._runtime_factory, self._sink_factory = runtime_factory, sink_factory
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="sci-model")
        self._sink_thread = ThreadPoolExecutor(1, thread_name_prefix="sci-sink")
        self._stopping = threading.Event()  # interrupts the storage retry wait on shutdown
        self.runtime: ModelRuntime | None = None
        self.sink: WindowSink | None = None
        self.tally = Tally()
        self.health = health or Health()
        self.metrics = self.health.metrics
        self.lag_source: Callable[[Any], int | None] | None = None  # tp -> high watermark (set by the app)
        # called on the event loop with each batch's stored decisions and its controller time (ms); must be cheap
        self.observers: list[Callable[[Sequence[WindowDecision], float], None]] = []
        self._said_no_lines = False
        self._tail: asyncio.Future | None = None  # the last batch's outputs, being written in the background

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self.health.set_flag("models", False, "loading")
        self.health.start(self.settings.health_port)
        self.runtime = await loop.run_in_executor(self._model_thread, self._runtime_factory)
        log.info("models loaded on %s: %s", self.runtime.device, self.runtime.describe())
        for (modality, lead), served in self.runtime.models.items():
            self.metrics.model_served.labels(modality, lead, served.card.name, str(self.runtime.device)).set(1)
        self._log_alert_levels()
        for name, card in sorted({m.card.name: m.card for m in self.runtime.models.values()}.items()):
            rule = card.controller.risk
            log.info("risk rule of %s: %s", name, "none (the policy alone abstains)" if rule is None else
                     rule.describe())
        self.health.set_flag("models", True, f"{len(self.runtime.models)} served on {self.runtime.device}")
        self.sink = await loop.run_in_executor(self._sink_thread, self._sink_factory)
        log.info("storage: %s", self.sink.health()[1])
        self.health.add_check("sink", self.sink.health)
        self.health.recheck()
        self._gc_pauses = GcPauses(self.metrics.gc_pause_seconds)
        if self._freeze_heap:
            log.info("start-up heap frozen out of garbage collection: %d objects", freeze_startup_heap())

    def _log_alert_levels(self) -> None:
        """Say where the ΔSP alert levels come from: each card's, or the settings' overrides."""
        s = self.settings
        if s.alert_threshold is not None or s.alert_critical is not None:
            log.info("ΔSP alert levels overridden for every model: warning %s, critical %s (None: the card's)",
                     s.alert_threshold, s.alert_critical)
        if s.alert_threshold is None or s.alert_critical is None:
            for name in sorted({m.card.name for m in self.runtime.models.values() if m.card.controller.alerts is None}):
                log.warning("checkpoint %s has no ΔSP alert levels on its card: its windows raise only the alerts "
                            "the settings alert_threshold / alert_critical give (recalibrate it)", name)

    async def on_stop(self) -> None:
        self._stopping.set()
        tail, self._tail = self._tail, None
        if tail is not None:  # the last batch's outputs: let them finish (storage waits end at _stopping)
            done, _ = await asyncio.wait({tail}, timeout=TAIL_STOP_S)
            if not done:
                tail.cancel()
                await asyncio.wait({tail})
            if not tail.cancelled() and tail.exception() is not None:
                log.warning("the last batch's outputs were not completed at shutdown (%s); its offsets are not "
                            "committed", type(tail.exception()).__name__)
        storage = dict(self.sink.counters()) if self.sink is not None else {}
        log.info("stopping: %s; storage %s", self.tally.line(), storage)
        self.health.stop()
        if self._gc_pauses is not None:
            self._gc_pauses.remove()
        if self.sink is not None:
            self.sink.close()
        self._model_thread.shutdown(wait=False)
        self._sink_thread.shutdown(wait=False)

    def stopping(self) -> None:
        """The worker is shutting down: stop waiting for storage (the held batch is abandoned, not committed)."""
        self._stopping.set()

    @faust.Service.timer(10.0)
    async def _report(self) -> None:
        if self.tally.windows or self.tally.dead_letters:
            log.info("%s", self.tally.line())

    @faust.Service.timer(2.0)
    async def _beat(self) -> None:
        self.health.beat()

    async def store_lines(self, lines: Sequence[str], what: str, retry: RetryPolicy) -> bool:
        """Store derived points (line protocol, e.g. the trust metrics) through the worker's sink, on its storage
        thread, under ``retry``. Only sinks that offer ``write_lines`` store them (the InfluxDB sinks do); with
        another sink they are skipped, said once in the log. Returns whether the sink took them."""
        write = getattr(self.sink, "write_lines", None)
        if write is None:
            if not self._said_no_lines:
                self._said_no_lines = True
                log.warning("%s: the sink %s has no write_lines; derived points (trust metrics) are not stored",
                            what, type(self.sink).__name__)
            return False
        if lines:
            await asyncio.get_running_loop().run_in_executor(
                self._sink_thread, lambda: retry.call(lambda: write(lines), what, stop=self._stopping))
        return True

    # ------------------------------------------------------------------------------------------------ batch
    async def process(self, events: Sequence[Any]) -> None:
        """Take one batch of Faust events: decode and classify it while the previous batch's outputs are written,
        then write its own outputs (store, publish) in the background and return, so that the agent takes the next
        batch meanwhile (at most one batch's outputs in flight). Every event is withheld from Faust's ack at the
        end of the agent's body and released once the batch's every event has its outputs or its dead letter,
        after the previous batch's: nothing is acknowledged before its outputs exist, and offsets are recorded in
        the order taken. Never raises for a bad window; raises only when a batch is abandoned (the worker is
        stopping, or outputs cannot be published; then this batch and any later one stay withheld, not
        committed), here or, for a batch whose outputs failed in the background, at the next call."""
        t0 = time.monotonic()
        held = withheld(events)
        items = [_Item(ev.message) for ev in events]
        prev, self._tail = self._tail, None
        try:
            try:
                controller_ms: float | None = await self._front(items)
            except _StageFailure:
                controller_ms = None  # an unexpected error: run the batch the sequential way, which halves it
            if prev is not None:
                await prev  # the previous batch's outputs exist and its events are released
            if controller_ms is None:
                await self._isolated([_Item(it.msg) for it in items])
                self._done(held, events, t0)
                return
        except BaseException as exc:
            if prev is not None and not prev.done():
                self._tail = prev  # still writing (this call was cancelled): on_stop waits for it
            self._abandoned(events, exc)
            raise
        self._tail = asyncio.ensure_future(self._finish(items, controller_ms, held, events, t0))

    async def _finish(self, items: list[_Item], controller_ms: float, held: list[Any], events: Sequence[Any],
                      t0: float) -> None:
        """In the background: a classified batch's outputs, then its events released."""
        try:
            try:
                await self._back(items, controller_ms)
            except _StageFailure:
                await self._isolated([_Item(it.msg) for it in items])
        except BaseException as exc:
            self._abandoned(events, exc)
            raise
        self._done(held, events, t0)

    def _done(self, held: list[Any], events: Sequence[Any], t0: float) -> None:
        release(held)
        self.tally.batches += 1
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(time.monotonic() - t0)
        self._update_lag(events)

    def _abandoned(self, events: Sequence[Any], exc: BaseException) -> None:
        log.warning("batch of %d events abandoned (%s: %s): its offsets are withheld from commit, they will be "
                    "delivered again", len(events), type(exc).__name__, exc)

    async def _isolated(self, items: list[_Item]) -> None:
        """Run the stages; an unexpected error halves the batch down to the window that causes it."""
        try:
            await self._back(items, await self._front(items))
        except (asyncio.CancelledError, SinkClosed, OutputsUnavailable):
            raise
        except _StageFailure as failure:
            exc = failure.__cause__ or failure
            if len(items) == 1:
                log.error("window dead-lettered at stage %s by an unexpected %s: %s", failure.stage,
                          type(exc).__name__, exc, exc_info=exc)
                items[0].kill(f"unexpected {type(exc).__name__} at stage {failure.stage}: {exc}",
                              type(exc).__name__, failure.stage)
                await self._send([items[0]])
                return
            log.warning("batch of %d failed at stage %s (%s: %s); halving it", len(items), failure.stage,
                        type(exc).__name__, exc)
            fresh = [_Item(it.msg) for it in items]  # start again from the messages
            mid = len(fresh) // 2
            await self._isolated(fresh[:mid])
            await self._isolated(fresh[mid:])

    async def _front(self, items: list[_Item]) -> float:
        """Decode and classify (on the model thread, off the event loop); returns the controller's time (ms).
        Raises :class:`_StageFailure` for an unexpected error."""
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, self._decode_classify, items)

    def _decode_classify(self, items: list[_Item]) -> float:
        stage = "decode"
        try:
            for it in items:
                self._decode(it)
            stage = "classify"
            live = [it for it in items if it.dead is None]
            if not live:
                return 0.0
            t0 = time.perf_counter()
            results = self._classify([it.window for it in live])
            controller_ms = (time.perf_counter() - t0) * 1000.0
            for it, res in zip(live, results, strict=True):
                self._take_result(it, res)
            return controller_ms
        except Exception as exc:
            raise _StageFailure(stage) from exc

    async def _back(self, items: list[_Item], controller_ms: float) -> None:
        """Build the outputs, store the decisions, publish; the observers see the delivered decisions. Raises
        :class:`_StageFailure` for an unexpected error."""
        stage = "output"
        try:
            now = time.time()
            for it in items:
                if it.dead is None:
                    self._build(it, now)
            stage = "store"
            stored = [it for it in items if it.dead is None]
            if stored:
                await self._store(stored)
            stage = "send"
            await self._send(items)
        except (asyncio.CancelledError, SinkClosed, OutputsUnavailable):
            raise
        except Exception as exc:
            raise _StageFailure(stage) from exc
        self._observe([it.decision for it in items if it.dead is None], controller_ms)

    def _observe(self, decisions: list[WindowDecision], controller_ms: float) -> None:
        """Tell the observers (e.g. the trust metrics) about the delivered decisions; never fails the batch."""
        for observe in self.observers if decisions else ():
            try:
                observe(decisions, controller_ms)
            except Exception:
                log.exception("observer %r failed on a batch of %d decisions (ignored)", observe, len(decisions))

    def _decode(self, it: _Item) -> None:
        try:
            it.window = decode_window(it.msg.value if it.msg.value is not None else b"")
        except ContractError as exc:
            it.kill(exc, "ContractError", "decode")
        except Exception as exc:  # the decoder itself failed: a bug, but still only this window's
            it.kill(f"decoder failed: {type(exc).__name__}: {exc}", type(exc).__name__, "decode")

    def _classify(self, windows: list[SensorWindow]) -> list[WindowResult | str | BaseException]:
        """On the model thread: the runtime on the whole list, bisected when it raises."""
        return bisect(windows, self.runtime.classify)

    def _take_result(self, it: _Item, res: WindowResult | str | BaseException) -> None:
        if isinstance(res, BaseException):
            it.kill(f"classification failed: {type(res).__name__}: {res}", type(res).__name__, "classify")
        elif isinstance(res, str):
            it.kill(res, "ModelInputError", "model_check")
        elif res.served and (problem := non_finite(res.sp, res.delta_sp, res.probs.tolist())):
            it.kill(problem, "NonFiniteOutput", "classify")
        else:
            it.result = res

    def _build(self, it: _Item, now: float) -> None:
        try:
            latency_ms = max(0.0, (now - it.msg.timestamp) * 1000.0)
            levels = alert_levels(it.result, self.settings.alert_threshold, self.settings.alert_critical)
            d = WindowDecision(it.window, it.result, latency_ms, self.worker_id, levels)
            it.decision, it.outputs = d, self._outputs(d)
        except Exception as exc:
            it.kill(f"outputs could not be built: {type(exc).__name__}: {exc}", type(exc).__name__, "output")

    async def _store(self, items: list[_Item]) -> None:
        """Store the decisions (storage thread); windows the store rejects are found by bisection and killed."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._sink_thread, bisect, [it.decision for it in items], self._write,
                                   (SinkRejected,))
        waited = 0.0
        while True:  # say at once, and then every 10 s, that a batch is held by storage
            done, _ = await asyncio.wait({fut}, timeout=10.0)
            if done:
                break
            waited += 10.0
            log.warning("storage has not answered for %.0f s; holding %d windows and their offsets", waited,
                        len(items))
        try:
            outcomes = fut.result()
        except SinkUnavailable as exc:  # a bounded retry policy gave up: the operator chose dead letters
            for it in items:
                it.kill(f"storage unavailable: {exc}", "SinkUnavailable", "store")
            return
        for it, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.metrics.sink_failures.labels("rejected").inc()
                it.kill(f"storage rejected the window: {outcome}", type(outcome).__name__, "store")

    def _write(self, decisions: Sequence[WindowDecision]) -> None:
        def retried(attempt: int, exc: Exception) -> None:
            self.tally.sink_retries += 1
            self.metrics.sink_retries.labels("unavailable").inc()
            self.metrics.sink_failures.labels("unavailable").inc()
            if attempt == 1:
                self.health.recheck()

        self.retry.call(lambda: self.sink.write(decisions), f"storing {len(decisions)} decisions",
                        stop=self._stopping, on_retry=retried)
        self.metrics.sink_points.inc(len(decisions))

    async def _send(self, items: list[_Item]) -> None:
        """Publish every item's outputs, or its dead letter; count windows whose label was delivered. Every message
        of the batch is handed to the producer first and the acknowledgements are awaited together (one task per
        batch, not per window)."""
        pending: list[tuple[_Item, asyncio.Future]] = []
        for it in items:
            pending.extend((it, fut) for fut in await self._publish(it))
        outcomes = await asyncio.gather(*(fut for _, fut in pending), return_exceptions=True)
        failed: dict[_Item, BaseException] = {}  # each item's first failed output (items hash by identity)
        for (it, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.setdefault(it, outcome)
        retry: list[_Item] = []
        for it, exc in failed.items():
            if isinstance(exc, asyncio.CancelledError):
                raise exc
            if it.dead is not None or not _permanent(exc):
                raise OutputsUnavailable(f"publishing failed: {type(exc).__name__}: {exc}") from exc
            it.kill(f"an output could not be published: {type(exc).__name__}: {exc}", type(exc).__name__, "send")
            retry.append(it)
        for it in retry:
            await asyncio.gather(*await self._publish(it))
        for it in items:  # every output or dead letter is delivered
            if it.dead is None:
                self._count(it.decision)
            else:
                _, error_type, stage = it.dead
                self.tally.dead_letters += 1
                self.metrics.dead_letters.labels(stage, error_type).inc()

    async def _publish(self, it: _Item) -> list[asyncio.Future]:
        """Hand ``it``'s outputs (or its dead letter) to the producer; returns the acknowledgements to await. An
        error raised while handing over is returned as a failed acknowledgement."""
        try:
            if it.dead is not None:
                reason, error_type, stage = it.dead
                m = it.msg
                body = dead_letter(m.value or b"", reason, m.topic, m.partition, m.offset, m.key, error_type,
                                   stage=stage)
                return [await self.outputs["deadletter"].send(key=m.key, value=body)]
            return [await self.outputs[role].send(key=key, value=value) for role, key, value in it.outputs]
        except Exception as exc:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return [failed]

    def _outputs(self, d: WindowDecision) -> list[tuple[str, bytes, bytes]]:
        label = d.label_message()
        key = label.key
        out = [("labels", key, label.to_json())]
        if d.result.abstained:
            out.append(("escalations", key, EscalationMessage.from_label(label).to_json()))
        level = d.severity
        if level is not None:
            out.append(("alerts", key, AlertMessage.from_label(label, level, d.alert_threshold).to_json()))
        return out

    def _count(self, d: WindowDecision) -> None:
        """After the label was delivered: the tally and the metrics."""
        t, r = self.tally, d.result
        level = d.severity
        t.windows += 1
        t.escalations += r.abstained
        t.alerts += level is not None
        t.labels[r.label] += 1
        t.latency_ms_sum += d.latency_ms
        m = self.metrics
        m.windows.labels(d.window.modality, d.decision).inc()
        if r.abstained:
            m.escalations.labels(d.window.modality).inc()
        if level is not None:
            m.alerts.labels(level).inc()

    def _update_lag(self, events: Sequence[Any]) -> None:
        if self.lag_source is None:
            return
        last: dict[Any, int] = {}
        for ev in events:
            last[ev.message.tp] = max(last.get(ev.message.tp, -1), ev.message.offset)
        for tp, offset in last.items():
            try:
                high = self.lag_source(tp)
            except Exception:
                high = None
            if high is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - offset - 1))


class _StageFailure(Exception):
    """An unexpected error inside a stage of a batch (its cause is the error)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def _permanent(exc: BaseException) -> bool:
    """A publish error that the same message would hit again (too large for the broker or the producer)."""
    name = type(exc).__name__
    return "TooLarge" in name or isinstance(exc, ValueError | TypeError)


class _FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_wait_ms  # read when the consumer starts (its fetcher)
        return consumer


class _FetchWaitConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _FetchWaitConsumerThread:
        return _FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _FetchWaitTransport(faust_aiokafka.Transport):
    Consumer = _FetchWaitConsumer

    def __init__(self, *args: Any, fetch_wait_ms: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_wait_ms = fetch_wait_ms


def bound_fetch_wait(app: faust.App, wait_s: float) -> None:
    """Make ``app``'s consumer wait at most ``wait_s`` seconds in a fetch for new messages. Faust fixes the
    long-poll at 1.5 s; a broker that holds a fetch until its limit even when messages arrive (the local tansu
    does) then adds up to 1.5 s to every window's latency. On Apache Kafka a fetch returns as soon as a message is
    there, and a shorter wait only makes an idle consumer ask more often."""
    app.transport = _FetchWaitTransport(app.conf.broker_consumer, app, fetch_wait_ms=max(1, round(wait_s * 1000)))


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


@dataclass(frozen=True)
class Worker:
    """One worker: the Faust app, its classifying agent, the pipeline the agent feeds and the trust metrics."""

    app: faust.App
    agent: faust.types.AgentT
    pipeline: Pipeline
    trust: TrustService


def create_worker(settings: Settings, runtime_factory: Callable[[], ModelRuntime] | None = None,
                  sink_factory: Callable[[], WindowSink] | None = None,
                  outputs: Callable[[faust.App], Mapping[str, faust.ChannelT]] | None = None,
                  freeze_heap: bool = False) -> Worker:
    """The Faust app of one worker with its agent and pipeline. Plug points: ``runtime_factory`` (default: the
    ``models`` setting on ``settings.device``), ``sink_factory`` (default: InfluxDB), ``outputs(app)`` -> role ->
    channel (default: the output topics). ``freeze_heap``: see :class:`Pipeline` (a worker process sets it)."""
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        settings.app_id, broker=_broker_url(settings.kafka_bootstrap), value_serializer="raw",
        key_serializer="raw", store="memory://", web_enabled=False, topic_partitions=settings.input_partitions,
        datadir=str(settings.state_dir / "faust" / settings.app_id),  # not ./{app_id}-data in the working directory
        topic_allow_declare=True, consumer_auto_offset_reset="earliest", producer_acks=-1,
        broker_session_timeout=10.0, broker_heartbeat_interval=2.0, broker_rebalance_timeout=10.0,
        broker_commit_every=settings.batch_size,
        broker_commit_interval=1.0,
        broker_credentials=faust_credentials(settings),
    )
    bound_fetch_wait(app, settings.fetch_wait_s)
    names, parts = settings.topics, settings.topic_partitions
    topics = {role: app.topic(names[role], partitions=parts[names[role]], key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw") for role in TOPIC_ROLES}
    health = Health()
    health.add_check("broker", tcp_check(settings.kafka_bootstrap))
    outs = outputs(app) if outputs else {role: t for role, t in topics.items() if role != "windows"}
    pipeline = Pipeline(
        settings,
        outs,
        runtime_factory or (lambda: _default_runtime(settings)),
        sink_factory or (lambda: _default_sink(settings)),
        RetryPolicy(settings.sink_max_attempts, settings.sink_backoff_s, settings.sink_max_backoff_s),
        health,
        freeze_heap=freeze_heap,
    )
    pipeline.lag_source = lambda tp: app.consumer.highwater(tp)
    # started before the consumer joins the group (App.on_init_dependencies appends after it), stopped last
    app.add_dependency(pipeline)
    trust = TrustService(settings, pipeline, outs.get("drift"))  # online trust metrics and drift
    app.add_dependency(trust)

    @app.agent(topics["windows"], name="classify")
    async def classify(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_timeout_s):
            await pipeline.process(events)

    return Worker(app, classify, pipeline, trust)


def _default_runtime(settings: Settings) -> ModelRuntime:
    from models.device import resolve_device

    return ModelRuntime(resolve_device(settings.device), settings.served_models)


def _default_sink(settings: Settings) -> WindowSink:
    from streams.influx import make_sink

    return make_sink(settings)


class _Worker(faust.Worker):
    """Faust's worker, telling the pipeline at SIGTERM/SIGINT that it stops, before Faust stops the agents: a batch
    held by unavailable storage is then abandoned (withheld, not committed) instead of holding up the shutdown."""

    def __init__(self, *args: Any, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pipeline = pipeline

    def _repr_name(self) -> str:  # log lines say "[^Worker]: Ready", as with Faust's own worker
        return "Worker"

    def _on_sigterm(self) -> None:
        self._pipeline.stopping()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._pipeline.stopping()
        super()._on_sigint()


class StartupError(RuntimeError):
    """The worker cannot start; the message is one line saying what is missing and what to do."""


def preflight(settings: Settings) -> None:
    """Check what the worker needs before Faust starts: no ``change-me`` placeholder among the secrets, the torch
    device (``cuda`` with no GPU visible fails here, not after the wait), every served checkpoint present, then the
    broker and InfluxDB reachable within ``settings.startup_wait_s`` (one log line each while one is down). Raises
    :class:`StartupError` (or ``SettingsError``) with one line for what is missing."""
    from models.checkpoint import available_checkpoints
    from models.device import resolve_device

    check_secrets(settings)
    try:
        resolve_device(settings.device)
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    known = available_checkpoints()
    missing = sorted({name for name in settings.served_models.values()
                      if name not in known and not (name.endswith(".json") and os.path.isfile(name))})
    if missing:
        raise StartupError(f"checkpoints missing: {', '.join(missing)} (known: {', '.join(known)}); train them with "
                           "`sci-monitor train` or change SCI_MODELS")
    checks = {f"Kafka at {settings.kafka_bootstrap}": tcp_check(settings.kafka_bootstrap),
              f"InfluxDB at {redact(settings.influx_url)}": influx_ping_check(settings.influx_url)}
    failing = wait_for(checks, settings.startup_wait_s)
    if failing:
        raise StartupError("; ".join(f"{name} not reachable after {settings.startup_wait_s:.0f} s ({why})"
                                     for name, why in failing.items())
                           + "; start the local stack with `sci-monitor stack up` or set SCI_KAFKA_BOOTSTRAP / "
                           "SCI_INFLUX_URL")


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM (Faust's Worker handles the signals and the final commit).

    Before Faust starts: secrets are redacted from every log record, ``change-me`` placeholders are refused, and
    the broker and InfluxDB are waited for (at most ``startup_wait_s``; :class:`StartupError` after that)."""
    install_log_redaction(secret_values(settings))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    preflight(settings)
    worker = create_worker(settings, freeze_heap=True)
    _Worker(worker.app, loglevel=loglevel, quiet=True, pipeline=worker.pipeline).execute_from_commandline()
