"""Online trust metrics: can the model be trusted today? Rolling fleet and per-stream metrics plus drift detection.

:class:`TrustMonitor` sees every decided window (cheap: appends to bounded deques and one ADWIN update per signal)
and, when asked for a snapshot, computes over the last ``trust_window`` windows of the fleet and of each stream:

- ``windows_per_s`` (decision rate over the rolling window's span of worker clock time), ``abstain_rate``,
  ``alert_rate`` (windows that raised a ΔSP alert at their card's levels), ``mean_passes``, ``sp_mean``,
  ``novelty_mean`` (where the model has a novelty score);
- where ground truth is present (replays of annotated recordings): ``accuracy``, ``auroc`` (misclassification
  AUROC of 1 − SP, :func:`controller.metrics.auroc`; absent while all windows are right or all wrong), ``ece``
  (top-class probability, ``ece_bins`` equal-width bins, :func:`controller.metrics.ece`), ``passes_right`` /
  ``passes_wrong``; plus the fleet's reliability bins (``sci_calibration``: per bin the mean confidence, the
  accuracy and the count).

Drift: one ADWIN detector (River, Bifet & Gavaldà 2007; confidence ``drift_delta``) per stream on SP and one on
the novelty score when the model reports one. ADWIN keeps an adaptive window and cuts it when two sub-windows have
means that differ beyond a Hoeffding-style bound, so it needs no fixed reference period and adapts to slow
streams; a detection becomes a :class:`DriftEvent` (JSON on ``<prefix>.drift`` and a ``sci_drift`` point).
ADWIN sees the windows in decision order, which is the time order while the worker keeps up (and within each
batch), but only roughly so when it works through a backlog: window keys spread a stream over the partitions.

In the worker, :class:`TrustService` (a ``faust.Service`` next to the pipeline) receives each stored batch of
decisions, feeds the monitor on its own thread (never on the event loop), and every ``trust_interval_s`` writes
the metric points through the worker's sink and sends the drift events.

Storage: :meth:`TrustMonitor.snapshot_lines` turns a snapshot into line protocol (measurements ``sci_trust``,
``sci_calibration``, ``sci_drift``, ``sci_batch``), written through the worker's sink. Points are timed at the
worker clock (never in the future), tagged ``scope`` = ``fleet`` | ``stream``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import faust
import numpy as np
from influxdb_client import Point, WritePrecision

from controller.metrics import auroc, ece
from streams.settings import Settings
from streams.sinks import RetryPolicy, WindowDecision

if TYPE_CHECKING:
    from streams.app import Pipeline

log = logging.getLogger("sci_monitor.trust")

FLEET = "all"
SIGNALS = ("sp", "novelty")
_OBS_FIELDS = ("t_s", "sp", "passes", "abstained", "alerted", "max_prob", "correct")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the trust metrics need of one decided window. ``correct`` is None without ground truth;
    ``novelty`` is None when the model has no novelty score; ``t_s`` = worker clock (s) when it was decided."""

    stream: str
    modality: str
    seq: int
    t_s: float
    sp: float
    passes: int
    abstained: bool
    alerted: bool
    max_prob: float
    correct: bool | None = None
    novelty: float | None = None


@dataclass(frozen=True)
class DriftEvent:
    """A detected change of ``signal`` (sp | novelty) on ``stream``: ADWIN's window mean before the cut and
    after it, the window width kept, and the window (seq, decision time) where it was detected."""

    stream: str
    modality: str
    signal: str
    seq: int
    t_ns: int
    mean_before: float
    mean_after: float
    width: int
    detector: str = "adwin"

    @property
    def key(self) -> bytes:
        return f"{self.stream}:{self.signal}:{self.seq}".encode()

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, **asdict(self)}, separators=(",", ":")).encode()


def window_metrics(obs: Sequence[Observation], ece_bins: int = 10) -> dict[str, float | int]:
    """Metrics of a list of observations (see the module docstring); keys absent when undefined.

    >>> o = [Observation("s", "ecg", i, float(i), sp, 5 + 10 * (not ok), False, sp < 0.5, 0.9, ok)
    ...      for i, (sp, ok) in enumerate([(0.9, True), (0.8, True), (0.3, False), (0.95, True)])]
    >>> m = window_metrics(o, ece_bins=10)
    >>> m["accuracy"], m["auroc"], m["passes_wrong"], m["passes_right"], m["alert_rate"]
    (0.75, 1.0, 15.0, 5.0, 0.25)
    >>> m["windows_per_s"]  # 4 windows, one per second
    1.0
    """
    n = len(obs)
    if n == 0:
        return {}
    cols = {k: np.fromiter((getattr(o, k) for o in obs), np.float64, n) for k in _OBS_FIELDS if k != "correct"}
    span = float(cols["t_s"].max() - cols["t_s"].min())
    out: dict[str, float | int] = {
        "n": n, "abstain_rate": float(cols["abstained"].mean()), "alert_rate": float(cols["alerted"].mean()),
        "mean_passes": float(cols["passes"].mean()), "sp_mean": float(cols["sp"].mean())}
    if n > 1 and span > 0:
        out["windows_per_s"] = (n - 1) / span  # n arrivals span n - 1 inter-arrival gaps
    novelty = [o.novelty for o in obs if o.novelty is not None]
    if novelty:
        out["novelty_mean"] = float(np.mean(novelty))
    known = np.fromiter((o.correct is not None for o in obs), bool, n)
    if known.any():
        ok = np.fromiter((bool(o.correct) for o in obs), bool, n)[known]
        passes = cols["passes"][known]
        out["n_truth"] = int(known.sum())
        out["accuracy"] = float(ok.mean())
        out["ece"] = ece(np.clip(cols["max_prob"][known], 0.0, 1.0), ok, ece_bins)
        if ok.any():
            out["passes_right"] = float(passes[ok].mean())
        if not ok.all():
            out["passes_wrong"] = float(passes[~ok].mean())
        a = auroc(1.0 - cols["sp"][known], ~ok)
        if not math.isnan(a):
            out["auroc"] = a
    return out


def calibration_bins(obs: Sequence[Observation], n_bins: int = 10) -> list[dict[str, float | int | str]]:
    """Reliability diagram of the windows with ground truth: per non-empty bin (right-closed, as
    :func:`controller.metrics.ece`) its label ``"0.8-0.9"``, mean confidence, accuracy and count.

    >>> o = [Observation("s", "ecg", 0, 0.0, 1.0, 1, False, False, p, ok)
    ...      for p, ok in [(0.95, True), (0.92, False), (0.55, True)]]
    >>> [(b["bin"], round(b["confidence"], 3), b["accuracy"], b["n"]) for b in calibration_bins(o)]
    [('0.5-0.6', 0.55, 1.0, 1), ('0.9-1.0', 0.935, 0.5, 2)]
    """
    pairs = [(o.max_prob, bool(o.correct)) for o in obs if o.correct is not None and math.isfinite(o.max_prob)]
    if not pairs:
        return []
    conf = np.clip(np.array([p for p, _ in pairs]), 0.0, 1.0)
    ok = np.array([c for _, c in pairs], np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.digitize(conf, edges[1:-1], right=True)
    out = []
    for b in np.unique(idx).tolist():
        sel = idx == b
        out.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "confidence": float(conf[sel].mean()),
                    "accuracy": float(ok[sel].mean()), "n": int(sel.sum())})
    return out


@dataclass
class _StreamState:
    modality: str
    recent: deque = field(default_factory=deque)
    seqs: set[int] = field(default_factory=set)  # the seqs in ``recent``: a redelivered window is seen once
    detectors: dict[str, Any] = field(default_factory=dict)


class TrustMonitor:
    """Rolling trust metrics and drift detectors of one worker (not thread-safe: feed it from one thread).

    A window seen again (same stream and seq among the stream's last ``trust_window``, e.g. redelivered after a
    rebalance) is ignored and counted in ``duplicates``, so redeliveries shift neither the metrics nor ADWIN.
    """

    def __init__(self, settings: Settings, clock=time.time) -> None:
        self.s, self.clock = settings, clock
        self.fleet: deque[Observation] = deque(maxlen=settings.trust_window)
        self.streams: dict[str, _StreamState] = {}
        self.drifts = 0
        self.duplicates = 0
        self._dirty: set[str] = set()  # streams with new windows since the last snapshot

    def _detector(self):
        from river.drift import ADWIN

        return ADWIN(delta=self.s.drift_delta)

    def observe(self, observations: Iterable[Observation]) -> list[DriftEvent]:
        """Add decided windows (in decision order); returns the drifts they revealed."""
        events = []
        for o in observations:
            st = self.streams.get(o.stream)
            if st is None:
                st = self.streams[o.stream] = _StreamState(o.modality, deque(maxlen=self.s.trust_window))
            if o.seq in st.seqs:  # at-least-once delivery: a window decided again must not count twice
                self.duplicates += 1
                continue
            if len(st.recent) == st.recent.maxlen:
                st.seqs.discard(st.recent[0].seq)
            st.recent.append(o)
            st.seqs.add(o.seq)
            self.fleet.append(o)
            self._dirty.add(o.stream)
            for signal, value in (("sp", o.sp), ("novelty", o.novelty)):
                if value is None or not math.isfinite(value):
                    continue
                det = st.detectors.get(signal)
                if det is None:
                    det = st.detectors[signal] = self._detector()
                before = det.estimation
                det.update(float(value))
                if det.drift_detected:
                    self.drifts += 1
                    events.append(DriftEvent(o.stream, o.modality, signal, o.seq, int(o.t_s * 1e9), float(before),
                                             float(det.estimation), int(det.width)))
        return events

    def snapshot_lines(self, now_s: float | None = None) -> list[str]:
        """Line protocol of the current fleet and per-stream metrics and the fleet's calibration bins; only what
        saw new windows since the last snapshot (an idle stream's metrics stop instead of repeating)."""
        t_ns = int((self.clock() if now_s is None else now_s) * 1e9)
        dirty, self._dirty = self._dirty, set()
        lines = []
        if dirty:
            lines.append(_trust_line("fleet", FLEET, FLEET, window_metrics(self.fleet, self.s.ece_bins), t_ns))
            for b in calibration_bins(self.fleet, self.s.ece_bins):
                lines.append(Point("sci_calibration").tag("bin", b["bin"]).field("confidence", b["confidence"])
                             .field("accuracy", b["accuracy"]).field("n", b["n"])
                             .time(t_ns, WritePrecision.NS).to_line_protocol())
        for stream in dirty:
            st = self.streams[stream]
            lines.append(_trust_line("stream", stream, st.modality, window_metrics(st.recent, self.s.ece_bins), t_ns))
        return lines


def _trust_line(scope: str, stream: str, modality: str, metrics: dict[str, float | int], t_ns: int) -> str:
    p = Point("sci_trust").tag("scope", scope).tag("stream", stream).tag("modality", modality)
    for k, v in metrics.items():
        p.field(k, v)
    return p.time(t_ns, WritePrecision.NS).to_line_protocol()


def drift_line(e: DriftEvent) -> str:
    """The ``sci_drift`` point of a detection (``drift`` = 1, so ``count``/``sum`` count detections)."""
    return (Point("sci_drift").tag("stream", e.stream).tag("modality", e.modality).tag("signal", e.signal)
            .field("drift", 1).field("mean_before", e.mean_before).field("mean_after", e.mean_after)
            .field("width", e.width).field("seq", e.seq).time(e.t_ns, WritePrecision.NS).to_line_protocol())


def batch_line(worker: str, size: int, controller_ms: float, passes: int, t_ns: int) -> str:
    """The ``sci_batch`` point of one classifier batch (compute dashboard)."""
    return (Point("sci_batch").tag("worker", worker).field("size", int(size))
            .field("controller_ms", float(controller_ms)).field("passes", int(passes))
            .time(t_ns, WritePrecision.NS).to_line_protocol())


def observation(d: WindowDecision, t_s: float) -> Observation:
    """The trust view of one served decision (``t_s``: when it was decided, worker clock)."""
    r = d.result
    return Observation(d.window.stream, d.window.modality, d.window.seq, t_s, float(r.sp), int(r.passes),
                       bool(r.abstained), d.alert >= 1, d.max_prob, d.correct,
                       None if math.isnan(r.novelty) else float(r.novelty))


class TrustService(faust.Service):
    """The worker's online trust metrics: fed by the pipeline after each stored batch, flushed periodically.

    Metric points go through the pipeline's sink (:meth:`streams.app.Pipeline.store_lines`) with a bounded
    retry; points that still fail are dropped with a warning and counted in ``dropped`` (they are derived and
    will be recomputed at the next flush, unlike window decisions, which are never dropped). Drift events go to
    ``drift_channel`` (``<prefix>.drift``) keyed ``stream:signal:seq``.
    """

    def __init__(self, settings: Settings, pipeline: Pipeline, drift_channel: faust.ChannelT | None,
                 clock=time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.s, self.pipeline, self.drift_channel, self.clock = settings, pipeline, drift_channel, clock
        self.monitor = TrustMonitor(settings, clock)
        self.retry = RetryPolicy(max_attempts=3, backoff_s=settings.sink_backoff_s,
                                 max_backoff_s=settings.sink_max_backoff_s)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sci-trust")
        self._lock = threading.Lock()
        self._lines: list[str] = []  # sci_batch and sci_drift points waiting for the next flush
        self._drifts: list[DriftEvent] = []
        self.dropped = 0
        pipeline.observers.append(self.observe)

    def observe(self, decisions: Sequence[WindowDecision], controller_ms: float) -> None:
        """Called on the event loop after a batch was stored: hands it to the trust thread."""
        now = self.clock()
        # keys are per window, so a stream's windows spread over the input partitions: a batch may hold them out
        # of order (a backlog read partition by partition even more); restore each stream's order within the batch
        obs = sorted((observation(d, now) for d in decisions if d.result.served), key=lambda o: (o.stream, o.seq))
        batch = batch_line(self.pipeline.worker_id, len(decisions), controller_ms,
                           sum(d.result.passes for d in decisions), int(now * 1e9))
        self._thread.submit(self._ingest, obs, batch)

    def _ingest(self, obs: list[Observation], batch: str) -> None:
        try:
            events = self.monitor.observe(obs)
        except Exception:  # a metrics bug must not take the worker down
            log.exception("trust metrics: observing %d windows failed", len(obs))
            events = []
        with self._lock:
            self._lines.append(batch)
            self._lines.extend(drift_line(e) for e in events)
            self._drifts.extend(events)
        for e in events:
            log.warning("drift on %s (%s): mean %.3f -> %.3f at seq %d", e.stream, e.signal, e.mean_before,
                        e.mean_after, e.seq)

    def _collect(self) -> tuple[list[str], list[DriftEvent]]:
        with self._lock:
            lines, drifts = self._lines, self._drifts
            self._lines, self._drifts = [], []
        return lines + self.monitor.snapshot_lines(), drifts

    async def flush(self) -> None:
        """Write the pending and current metric points and send the pending drift events."""
        loop = asyncio.get_running_loop()
        lines, drifts = await loop.run_in_executor(self._thread, self._collect)
        try:
            await self.pipeline.store_lines(lines, f"storing {len(lines)} trust-metric points", self.retry)
        except Exception as exc:  # unavailable after the bounded retries, rejected, or a sink bug: never fatal
            self.dropped += len(lines)
            log.warning("trust metrics: %d points dropped (%s: %s); %d dropped so far", len(lines),
                        type(exc).__name__, exc, self.dropped)
        if self.drift_channel is not None:
            for e in drifts:
                await self.drift_channel.send(key=e.key, value=e.to_json())

    @faust.Service.task
    async def _flusher(self) -> None:
        while not self.should_stop:
            await self.sleep(self.s.trust_interval_s)
            if not self.should_stop and self.pipeline.sink is not None:
                await self.flush()

    async def on_stop(self) -> None:
        if self.pipeline.sink is not None:
            try:
                await self.flush()
            except Exception as exc:  # stopping: say so, do not block the shutdown
                log.warning("trust metrics: final flush failed: %s", exc)
        self._thread.shutdown(wait=False)
