"""Worker health and metrics over HTTP: ``/healthz`` (alive), ``/readyz`` (ready to work), ``/metrics``.

- ``/healthz``: 200 while the worker's event loop beats (:meth:`Health.beat`, called from a Faust timer); 503
  when the loop has not beaten for ``stall_s`` seconds (blocked or wedged). Restart the process on 503.
- ``/readyz``: 200 when every readiness check passes (models loaded, broker reachable, sink reachable), else 503;
  the body is JSON ``{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}``. Checks run on a background
  thread every ``interval_s`` (each bounded by its own timeout), so a request never waits on a dead dependency.
- ``/metrics``: Prometheus text format (prometheus-client) of :class:`WorkerMetrics`.

The server is a ``ThreadingHTTPServer`` on its own daemon thread: it answers even while the event loop is busy,
which is what lets ``/healthz`` report a stalled loop. Port ``settings.health_port`` (0: no server).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streams.security import redact

log = logging.getLogger("sci_monitor.health")

Check = Callable[[], tuple[bool, str]]


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of their own (several workers in one test process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.windows = Counter("sci_windows", "windows labelled (label sent and point stored)",
                               ("modality", "decision"), registry=r)
        self.escalations = Counter("sci_escalations", "abstained windows sent to sci.escalations",
                                   ("modality",), registry=r)
        self.alerts = Counter("sci_alerts", "ΔSP alerts sent", ("severity",), registry=r)
        self.dead_letters = Counter("sci_dead_letters", "messages sent to the dead-letter topic, by the stage "
                                    "that failed and the error type", ("stage", "error_type"), registry=r)
        self.batches = Counter("sci_batches", "batches completed (outputs sent and stored)", registry=r)
        self.batch_seconds = Histogram("sci_batch_seconds", "wall time of one batch, decode to stored",
                                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                       registry=r)
        self.gc_pause_seconds = Histogram("sci_gc_pause_seconds", "wall time of one garbage collection (every "
                                          "thread waits on it), by generation", ("generation",),
                                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=r)
        self.sink_retries = Counter("sci_sink_retries", "sink writes retried after a retryable error",
                                    ("kind",), registry=r)
        self.sink_failures = Counter("sci_sink_failures", "sink writes that failed, by kind "
                                     "(retryable: held and retried; rejected: dead-lettered)", ("kind",),
                                     registry=r)
        self.sink_points = Counter("sci_sink_points", "points written to the sink", registry=r)
        self.consumer_lag = Gauge("sci_consumer_lag", "records behind the partition's high watermark",
                                  ("topic", "partition"), registry=r)
        self.ready = Gauge("sci_ready", "1 when every readiness check passes", registry=r)
        self.dependency_up = Gauge("sci_dependency_up", "1 when the dependency answered its last check",
                                   ("dependency",), registry=r)
        self.model_served = Gauge("sci_model_served", "1 per (modality, lead) the worker serves, with its checkpoint "
                                  "and the torch device it runs on", ("modality", "lead", "checkpoint", "device"),
                                  registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class CheckResult:
    ok: bool
    detail: str
    at: float


def tcp_check(bootstrap: str, timeout_s: float = 2.0) -> Check:
    """Reachable when a TCP connection to any ``host:port`` of the bootstrap list opens within the timeout."""
    servers = [s.strip().rsplit(":", 1) for s in bootstrap.split(",") if s.strip()]

    def check() -> tuple[bool, str]:
        errors = []
        for host, port in servers:
            try:
                with socket.create_connection((host, int(port)), timeout=timeout_s):
                    return True, f"{host}:{port} reachable"
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc}")
        return False, "; ".join(errors) or "no bootstrap servers"

    return check


def influx_ping_check(url: str, timeout_s: float = 2.0, secrets: tuple[str, ...] = ()) -> Check:
    """Reachable when ``GET <url>/ping`` answers 204 (InfluxDB 1.x and 2.x) within the timeout."""
    session = requests.Session()
    base = url.rstrip("/")

    def check() -> tuple[bool, str]:
        try:
            r = session.get(f"{base}/ping", timeout=timeout_s)
        except requests.RequestException as exc:
            return False, redact(f"{type(exc).__name__}: {exc}", secrets)[:300]
        if r.status_code != 204:
            return False, f"/ping answered HTTP {r.status_code}"
        return True, "ping 204" + (f" (version {r.headers['X-Influxdb-Version']})"
                                   if "X-Influxdb-Version" in r.headers else "")

    return check


class Health:
    """Readiness checks, liveness heartbeat and the HTTP server of one worker."""

    def __init__(self, metrics: WorkerMetrics | None = None, *, interval_s: float = 2.0, stall_s: float = 60.0,
                 on_change: Callable[[str, bool, str], None] | None = None) -> None:
        self.metrics = metrics or WorkerMetrics()
        self.interval_s, self.stall_s = interval_s, stall_s
        self._checks: dict[str, Check] = {}
        self._flags: dict[str, CheckResult] = {}
        self._results: dict[str, CheckResult] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_beat = time.monotonic()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._on_change = on_change or self._log_change

    # ------------------------------------------------------------------------------------------ state
    def add_check(self, name: str, check: Check) -> None:
        """A readiness check run on the checker thread: returns (ok, detail) and must bound its own time."""
        self._checks[name] = check

    def set_flag(self, name: str, ok: bool, detail: str = "") -> None:
        """A readiness condition the worker sets itself (e.g. models loaded)."""
        with self._lock:
            previous = self._flags.get(name)
            self._flags[name] = CheckResult(ok, detail, time.monotonic())
        if previous is None or previous.ok != ok:
            self._publish(name, ok, detail)

    def beat(self) -> None:
        """Liveness heartbeat: call from the event loop (a timer) every few seconds."""
        self._last_beat = time.monotonic()

    def recheck(self) -> None:
        """Run the checks now (e.g. after a sink error) instead of at the next interval."""
        self._wake.set()

    def state(self) -> dict[str, CheckResult]:
        with self._lock:
            return {**self._results, **self._flags}

    def ready(self) -> bool:
        state = self.state()
        return bool(state) and all(r.ok for r in state.values()) and set(self._checks) <= set(state)

    def alive(self) -> tuple[bool, float]:
        quiet = time.monotonic() - self._last_beat
        return quiet < self.stall_s, quiet

    def run_checks(self) -> None:
        for name, check in list(self._checks.items()):
            try:
                ok, detail = check()
            except Exception as exc:  # a check must never take the checker thread down
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            with self._lock:
                previous = self._results.get(name)
                self._results[name] = CheckResult(ok, detail, time.monotonic())
            self.metrics.dependency_up.labels(name).set(1 if ok else 0)
            if previous is None or previous.ok != ok:
                self._publish(name, ok, detail)
        self.metrics.ready.set(1 if self.ready() else 0)

    def _publish(self, name: str, ok: bool, detail: str) -> None:
        self._on_change(name, ok, detail)

    @staticmethod
    def _log_change(name: str, ok: bool, detail: str) -> None:
        if ok:
            log.info("ready: %s (%s)", name, detail)
        else:
            log.warning("not ready: %s (%s)", name, detail)

    # ------------------------------------------------------------------------------------------- threads
    def start(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the checker thread and, when ``port`` is not 0, the HTTP server; returns the bound port."""
        checker = threading.Thread(target=self._check_loop, name="sci-health-checks", daemon=True)
        checker.start()
        self._threads.append(checker)
        if not port:
            return 0
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:  # e.g. a second worker on one host: work on, but say that probes cannot reach it
            log.error("health endpoints not served: port %d: %s (set SCI_HEALTH_PORT)", port, exc)
            return 0
        self._server.daemon_threads = True
        server = threading.Thread(target=self._server.serve_forever, name="sci-health-http", daemon=True)
        server.start()
        self._threads.append(server)
        bound = self._server.server_address[1]
        log.info("health endpoints on port %d: /healthz /readyz /metrics", bound)
        return bound

    def _check_loop(self) -> None:
        while not self._stop.is_set():
            self.run_checks()
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, health.metrics.text(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                alive, quiet = health.alive()
                self._json(200 if alive else 503, {"alive": alive, "event_loop_quiet_s": round(quiet, 3)})
            elif path == "/readyz":
                state = health.state()
                ready = health.ready()
                checks = {k: {"ok": r.ok, "detail": r.detail} for k, r in sorted(state.items())}
                self._json(200 if ready else 503, {"ready": ready, "checks": checks})
            else:
                self._json(404, {"error": f"unknown path {path}; try /healthz, /readyz or /metrics"})

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not worth a line
            pass

    return Handler


def wait_for(checks: dict[str, Check], timeout_s: float, poll_s: float = 1.0) -> dict[str, str]:
    """Poll ``checks`` until all pass or ``timeout_s`` is over; one log line per dependency when it is first
    found down (and one when it comes up after that). Returns {name: why} of those still down at the end."""
    deadline = time.monotonic() + timeout_s
    said: set[str] = set()
    while True:
        failing: dict[str, str] = {}
        for name, check in checks.items():
            ok, detail = check()
            if not ok:
                failing[name] = detail
                if name not in said:
                    said.add(name)
                    log.warning("waiting for %s: %s (at most %.0f s)", name, detail, timeout_s)
            elif name in said:
                said.discard(name)
                log.info("%s is up: %s", name, detail)
        if not failing or time.monotonic() >= deadline:
            return failing
        time.sleep(poll_s)
