"""Local stack against the real tansu broker and influxd: health, idempotent up, topics, round trip, down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from streams.settings import load_settings
from streams.stack import LocalStack, StackError, free_ports, port_open

pytestmark = pytest.mark.integration


def private_stack(tmp_path) -> LocalStack:
    kafka_port, influx_port, rpc_port = free_ports(3)
    return LocalStack(load_settings(env={}), state_dir=tmp_path / "state", kafka_port=kafka_port,
                      influx_port=influx_port, influx_rpc_port=rpc_port)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def admin_for(stack: LocalStack) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap, request_timeout_ms=5000,
                            bootstrap_timeout_ms=5000)


def test_up_gives_two_healthy_services(local_stack):
    status = local_stack.status()
    assert status.healthy, str(status)
    assert status.kafka.running and status.influx.running
    assert status.influx.detail.startswith("InfluxDB 1.")
    assert status.kafka.address == local_stack.settings.kafka_bootstrap
    for svc in (status.kafka, status.influx):
        assert pid_exists(svc.pid)
        assert svc.log_path.is_file() and svc.log_path.parent.parent == local_stack.state_dir
    assert local_stack.settings.influx_url == f"http://127.0.0.1:{local_stack.settings.influx_port}"


def test_up_again_is_a_noop_with_the_same_pids(local_stack):
    before = local_stack.status()
    again = LocalStack(local_stack.settings).up(timeout=10)  # a second handle on the same state dir and ports
    assert again.healthy
    assert (again.kafka.pid, again.influx.pid) == (before.kafka.pid, before.influx.pid)


def test_topics_exist_with_the_configured_partitions(local_stack):
    s = local_stack.settings
    admin = admin_for(local_stack)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(s.topic_partitions))}
    finally:
        admin.close()
    assert described == {"sci.windows": 4, "sci.labels": 1, "sci.escalations": 1, "sci.alerts": 1,
                         "sci.deadletter": 1, "sci.drift": 1}
    assert local_stack.status().topics == described


def test_database_exists(local_stack):
    import requests

    r = requests.post(f"{local_stack.settings.influx_url}/query", data={"q": "SHOW DATABASES"}, timeout=5)
    names = [row[0] for row in r.json()["results"][0]["series"][0]["values"]]
    assert local_stack.settings.influx_db in names


def test_produce_consume_round_trip(local_stack):
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"  # own topic: the sci.* topics are shared in the session
    bootstrap = local_stack.settings.kafka_bootstrap
    admin = admin_for(local_stack)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()
    sent = [(f"k{i % 3}".encode(), f"message {i}".encode()) for i in range(25)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in sent:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=10)
    finally:
        producer.close()
    # tansu answers a new group's JoinGroup only after the rebalance timeout (= max_poll_interval_ms): keep it
    # short, with a unique group id
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"test-{uuid.uuid4().hex}",
                             auto_offset_reset="earliest", consumer_timeout_ms=1000,
                             max_poll_interval_ms=3000, session_timeout_ms=3000, heartbeat_interval_ms=500)
    received = []
    deadline = time.monotonic() + 20
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            received += [(m.key, m.value, m.partition) for m in consumer]
    finally:
        consumer.close()
    assert sorted((k, v) for k, v, _ in received) == sorted(sent)
    for key in {k for k, _ in sent}:  # one key -> one partition, in send order
        assert len({p for k, _, p in received if k == key}) == 1
        assert [v for k, v, _ in received if k == key] == [v for k, v in sent if k == key]


def test_private_stack_restarts_stale_and_dead_services_and_stops_cleanly(tmp_path):
    stack = private_stack(tmp_path)
    s = stack.settings
    try:
        # stale pid files: a process that has exited, and a live process that is not ours (this test)
        finished = subprocess.Popen(["true"])
        finished.wait()
        stack.kafka.pid_path.parent.mkdir(parents=True)
        stack.kafka.pid_path.write_text(f"{finished.pid}\n")
        stack.influx.pid_path.parent.mkdir(parents=True)
        stack.influx.pid_path.write_text(f"{os.getpid()}\n")
        first = stack.up(timeout=30)
        assert first.healthy, str(first)
        assert first.kafka.pid != finished.pid and first.influx.pid != os.getpid()

        os.kill(first.kafka.pid, signal.SIGKILL)  # broker dies: status says so, up restarts only it
        deadline = time.monotonic() + 5
        while stack.status().kafka.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not stack.status().kafka.running
        second = stack.up(timeout=30)
        assert second.healthy and second.kafka.pid != first.kafka.pid
        assert second.influx.pid == first.influx.pid
        assert second.topics == s.topic_partitions  # memory storage restarted empty; topics recreated
    finally:
        stack.down(timeout=10)
    after = stack.status()
    assert not after.kafka.running and not after.influx.running
    for pid in (second.kafka.pid, second.influx.pid):
        assert not pid_exists(pid)
    for port in (s.kafka_port, s.influx_port, s.influx_rpc_port):
        assert port_free(port), port
    assert not stack.kafka.pid_path.exists() and not stack.influx.pid_path.exists()
    assert "Signal received" in stack.influx.log_path.read_text()  # stopped by SIGTERM, not killed
    stack.down()  # nothing running: no-op


def test_port_in_use_is_reported_and_nothing_starts(tmp_path):
    stack = private_stack(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.settings.influx_port))
        squatter.listen()
        port = stack.settings.influx_port
        with pytest.raises(StackError, match=rf"influxdb: 127\.0\.0\.1:{port} is already in use"):
            stack.up(timeout=10)
    assert not port_open(stack.settings.kafka_port)
    assert not stack.kafka.pid_path.exists() and not stack.influx.pid_path.exists()


def test_missing_influxd_names_make_setup(tmp_path, monkeypatch):
    stack = private_stack(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no influxd on PATH
    with pytest.raises(StackError, match=r"influxd not found on PATH; run `make setup`"):
        stack.up(timeout=10)
    assert not port_open(stack.settings.kafka_port)  # the broker was not started either
