"""Health endpoints: /healthz (event loop beats), /readyz (checks against the real broker and InfluxDB), /metrics."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.health import Health, influx_ping_check, tcp_check
from streams.stack import _pid_alive, free_ports


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def health():
    h = Health(interval_s=0.2, stall_s=0.5)
    yield h
    h.stop()


def test_healthz_follows_the_event_loop_heartbeat_and_metrics_parse(health) -> None:
    port = health.start(free_ports(1)[0])
    health.beat()
    assert get(port, "/healthz")[0] == 200
    time.sleep(0.6)
    status, body = get(port, "/healthz")
    assert status == 503 and json.loads(body)["alive"] is False
    health.beat()
    assert get(port, "/healthz")[0] == 200
    m = health.metrics
    m.windows.labels("ecg", "stopped").inc(3)
    m.dead_letters.labels("decode", "ContractError").inc()
    m.batch_seconds.observe(0.12)
    m.consumer_lag.labels("sci.windows", "0").set(7)
    status, body = get(port, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("sci_windows_total", (("decision", "stopped"), ("modality", "ecg")))] == 3
    assert samples[("sci_dead_letters_total", (("error_type", "ContractError"), ("stage", "decode")))] == 1
    assert samples[("sci_batch_seconds_count", ())] == 1
    assert samples[("sci_consumer_lag", (("partition", "0"), ("topic", "sci.windows")))] == 7
    assert {"sci_sink_retries", "sci_sink_failures", "sci_ready", "sci_batches"} <= set(families)
    assert get(port, "/nope")[0] == 404


def test_readyz_needs_every_check_and_every_flag(health) -> None:
    port = health.start(free_ports(1)[0])
    dead = free_ports(1)[0]
    health.add_check("broker", tcp_check(f"127.0.0.1:{dead}", timeout_s=0.5))
    health.set_flag("models", False, "loading")
    health.run_checks()
    status, body = get(port, "/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["models"] == {"ok": False, "detail": "loading"} and checks["broker"]["ok"] is False
    health._checks["broker"] = lambda: (True, "fake")
    health.run_checks()
    assert get(port, "/readyz")[0] == 503  # models still loading
    health.set_flag("models", True, "2 models on cpu")
    assert get(port, "/readyz")[0] == 200


@pytest.mark.integration
def test_readyz_is_503_while_influxdb_is_down_and_200_after(private_stack, health) -> None:
    s = private_stack.settings
    health.add_check("broker", tcp_check(s.kafka_bootstrap))
    health.add_check("sink", influx_ping_check(s.influx_url, timeout_s=1.0))
    health.set_flag("models", True)
    port = health.start(free_ports(1)[0])
    deadline = time.monotonic() + 10
    while get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(port, "/readyz")[0] == 200
    pid = private_stack.influx.read_pid()
    os.kill(pid, signal.SIGTERM)
    while _pid_alive(pid):
        time.sleep(0.1)
    time.sleep(0.5)
    status, body = get(port, "/readyz")
    assert status == 503 and json.loads(body)["checks"]["sink"]["ok"] is False
    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in text_string_to_metric_families(get(port, "/metrics")[1].decode()) for s in f.samples}
    assert samples[("sci_dependency_up", ("sink",))] == 0 and samples[("sci_ready", ())] == 0
    private_stack.up(timeout=30)
    deadline = time.monotonic() + 10
    while get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(port, "/readyz")[0] == 200


def test_worker_without_broker_and_influxdb_says_so_once_each_and_exits_non_zero(tmp_path) -> None:
    import subprocess
    import sys

    kafka, influx = free_ports(2)
    env = {**os.environ, "SCI_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}", "SCI_INFLUX_URL": f"http://127.0.0.1:{influx}",
           "SCI_STARTUP_WAIT_S": "3", "SCI_HEALTH_PORT": "0", "SCI_DEVICE": "cpu"}
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sci_monitor", "worker"], env=env, capture_output=True, text=True,
                       timeout=120)
    took = time.monotonic() - t
    out = r.stdout + r.stderr
    assert r.returncode == 2 and took < 60, (r.returncode, took, out[-2000:])
    assert out.count(f"waiting for Kafka at 127.0.0.1:{kafka}") == 1
    assert out.count(f"waiting for InfluxDB at http://127.0.0.1:{influx}") == 1
    assert "not reachable after 3 s" in out and "Traceback" not in out


def test_placeholder_secrets_stop_the_worker_before_it_connects() -> None:
    import subprocess
    import sys

    env = {**os.environ, "SCI_INFLUX_TOKEN": "change-me-influx-operator-token", "SCI_HEALTH_PORT": "0"}
    r = subprocess.run([sys.executable, "-m", "sci_monitor", "worker"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "placeholder 'change-me'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is visible here")
def test_worker_asked_for_cuda_without_a_gpu_says_so_before_waiting_for_services() -> None:
    import subprocess
    import sys

    kafka, influx = free_ports(2)
    env = {**os.environ, "SCI_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}", "SCI_INFLUX_URL": f"http://127.0.0.1:{influx}",
           "SCI_STARTUP_WAIT_S": "60", "SCI_HEALTH_PORT": "0", "SCI_DEVICE": "cuda"}
    r = subprocess.run([sys.executable, "-m", "sci_monitor", "worker"], env=env, capture_output=True, text=True,
                       timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "CUDA is not available" in out, (r.returncode, out[-2000:])
    assert "waiting for" not in out and "Traceback" not in out  # no silent CPU fallback, no 60 s wait first
