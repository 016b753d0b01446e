"""Integration test of the docker compose flow with real containers (testcontainers).

Starts the images pinned in docker-compose.yml: Kafka (KRaft, topic auto-create off) and InfluxDB 2 (setup
mode), runs the compose file's own one-shot scripts inside them (kafka-init topic creation, influxdb-dbrp
mapping), then runs `sci-monitor worker` and `sci-monitor replay` from this checkout as subprocesses against
them and checks: every replayed window got a label, every window is a point in InfluxDB, every InfluxQL
query of the Grafana dashboard runs through the DBRP mapping, and Grafana itself provisions the datasource and
dashboard from ./grafana and answers a dashboard query.

Skipped with "no Docker engine" where no engine answers (docker.from_env().ping()).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _docker_engine_answers(), reason="no Docker engine"),
]

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DASHBOARD = json.loads((REPO / "grafana" / "dashboards" / "sci-monitor.json").read_text())
TOPICS = ("sci.windows", "sci.labels", "sci.escalations", "sci.alerts", "sci.deadletter", "sci.drift")
MAX_WINDOWS = 200
ORG, BUCKET = "sci-it", "sci-it-bucket"
TOKEN = secrets.token_hex(24)
FLOW_TIMEOUT_S = 300


# ---- helpers ------------------------------------------------------------------------------------------


def compose_script(service: str) -> str:
    """The shell script of a compose one-shot service, with compose's `$$` escapes undone."""
    command = SERVICES[service]["command"]
    text = command if isinstance(command, str) else "\n".join(command)
    assert "${" not in text.replace("$${", ""), f"{service}: script must not depend on compose interpolation"
    return text.replace("$$", "$")


def run_in(container, script: str, env: dict[str, str]) -> str:
    """Run a shell script inside a started testcontainers container; fail with its output if it fails."""
    result = container.get_wrapped_container().exec_run(["/bin/sh", "-ec", script], environment=env)
    output = result.output.decode(errors="replace")
    assert result.exit_code == 0, f"script failed ({result.exit_code}):\n{output}"
    return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def sci_monitor_exe() -> str:
    exe = Path(sys.executable).with_name("sci-monitor")
    if exe.exists():
        return str(exe)
    found = shutil.which("sci-monitor")
    assert found, "sci-monitor is not installed: run `pip install -e '.[dev]'` (make setup)"
    return found


def count_messages(bootstrap: str, topic: str) -> int:
    """Records in `topic` up to its end offsets, consumed one by one (transaction markers don't count)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        n = 0
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end offsets {end}"
            n += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
        return n
    finally:
        consumer.close()


def partition_counts(bootstrap: str) -> dict[str, int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in TOPICS}
    finally:
        consumer.close()


def influxql(url: str, query: str) -> list[dict]:
    """Run InfluxQL through the 1.x compatibility API (db sci -> DBRP mapping); return the series."""
    response = requests.get(
        f"{url}/query",
        params={"db": "sci", "q": query, "epoch": "ms"},
        headers={"Authorization": f"Token {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, f"{response.status_code} {response.text} for: {query}"
    (result,) = response.json()["results"]
    assert "error" not in result, f"{result['error']} for: {query}"
    return result.get("series", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, InfluxQL) for every InfluxDB query of the dashboard, variables included."""
    out = [
        (f"variable {v['name']}", "var", v["query"])
        for v in DASHBOARD["templating"]["list"]
        if v["type"] == "query"
    ]
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            if target["datasource"]["type"] == "influxdb":
                out.append((panel["title"], target["refId"], target["query"]))
    return out


def substitute_variables(query: str) -> str:
    """What Grafana's frontend does before sending a query: template variables = All (regex .*)."""
    return query.replace("/^$modality$/", "/^.*$/").replace("/^$stream$/", "/^.*$/")


def substitute_macros(query: str, t0_ms: int, t1_ms: int) -> str:
    """What Grafana's InfluxQL backend does: $timeFilter and $__interval(_ms) for a ~200-point range."""
    interval_ms = max(1, math.ceil((t1_ms - t0_ms) / 200))
    return (
        query.replace("$timeFilter", f"time >= {t0_ms}ms and time <= {t1_ms}ms")
        .replace("$__interval_ms", str(interval_ms))
        .replace("$__interval", f"{interval_ms}ms")
    )


def as_sent(target: dict) -> dict:
    """A dashboard target as the Grafana frontend posts it to /api/ds/query (variables = All, visible)."""
    if target["datasource"]["type"] != "influxdb":
        return target
    return {
        **target,
        "query": substitute_variables(target["query"]),
        "hide": False,
        "intervalMs": 1000,
        "maxDataPoints": 200,
    }


# ---- containers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network():
    from testcontainers.core.network import Network

    with Network() as net:
        yield net


@pytest.fixture(scope="module")
def kafka():
    """Single-node KRaft broker, image from docker-compose.yml, on a fixed host port (advertised as is)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    port = free_port()
    host = DockerClient().host()
    container = (
        DockerContainer(SERVICES["kafka"]["image"])
        .with_bind_ports(port, port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENERS=f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://0.0.0.0:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{port}",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
        .waiting_for(LogMessageWaitStrategy(r"Kafka Server started").with_startup_timeout(180))
    )
    with container:
        container.bootstrap = f"{host}:{port}"
        container.internal_bootstrap = f"localhost:{port}"
        yield container


@pytest.fixture(scope="module")
def topics(kafka):
    """Run the compose kafka-init script twice: create with 3 input partitions, then raise them to 4."""
    script = compose_script("kafka-init")
    env = {"BOOTSTRAP": kafka.internal_bootstrap, "OUTPUT_PARTITIONS": "1"}
    first = partition_counts_after(kafka, script, {**env, "INPUT_PARTITIONS": "3"})
    second = partition_counts_after(kafka, script, {**env, "INPUT_PARTITIONS": "4"})
    return {"first": first, "second": second}


def partition_counts_after(kafka, script: str, env: dict[str, str]) -> dict[str, int]:
    run_in(kafka, script, env)
    return partition_counts(kafka.bootstrap)


@pytest.fixture(scope="module")
def influx(network):
    """InfluxDB 2 in setup mode (image from docker-compose.yml), reachable as `influxdb` on the network."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    container = (
        DockerContainer(SERVICES["influxdb"]["image"])
        .with_exposed_ports(8086)
        .with_envs(
            DOCKER_INFLUXDB_INIT_MODE="setup",
            DOCKER_INFLUXDB_INIT_USERNAME="sci-admin",
            DOCKER_INFLUXDB_INIT_PASSWORD=secrets.token_hex(12),
            DOCKER_INFLUXDB_INIT_ORG=ORG,
            DOCKER_INFLUXDB_INIT_BUCKET=BUCKET,
            DOCKER_INFLUXDB_INIT_ADMIN_TOKEN=TOKEN,
        )
        .with_network(network)
        .with_network_aliases("influxdb")
        .waiting_for(HttpWaitStrategy(8086, "/health").for_status_code(200).with_startup_timeout(180))
    )
    with container:
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8086)}"
        deadline = time.monotonic() + 120
        while True:  # setup finishes just before /health answers; wait until the bucket is visible
            r = requests.get(
                f"{url}/api/v2/buckets", params={"name": BUCKET}, headers={"Authorization": f"Token {TOKEN}"}
            )
            if r.status_code == 200 and r.json().get("buckets"):
                break
            assert time.monotonic() < deadline, f"bucket {BUCKET} never appeared: {r.status_code} {r.text}"
            time.sleep(1)
        container.url = url
        yield container


@pytest.fixture(scope="module")
def dbrp(influx):
    """Run the compose influxdb-dbrp script twice (the second run must find the mapping and do nothing)."""
    env = {
        "INFLUX_HOST": "http://localhost:8086",
        "INFLUX_ORG": ORG,
        "INFLUX_TOKEN": TOKEN,
        "BUCKET": BUCKET,
        "DB": "sci",
        "RP": "autogen",
    }
    script = compose_script("influxdb-dbrp")
    return run_in(influx, script, env), run_in(influx, script, env)


@pytest.fixture(scope="module")
def flow(kafka, topics, influx, dbrp, tmp_path_factory):
    """Worker + replay subprocesses from this checkout; returns counts once the labels caught up."""
    from models.data.paths import data_dir

    record = data_dir() / "mitdb" / "100.hea"
    if not record.exists():
        pytest.skip(f"MIT-BIH record 100 not found at {record} (set SCI_DATA_DIR)")
    exe = sci_monitor_exe()
    work = tmp_path_factory.mktemp("flow")
    env = {
        **os.environ,
        "SCI_INFLUX_TOKEN": TOKEN,
        "SCI_STATE_DIR": str(work / "state"),
        "SCI_INPUT_PARTITIONS": "4",
        "SCI_OUTPUT_PARTITIONS": "1",
        "SCI_DEVICE": "cpu",
    }
    worker_log = work / "worker.log"
    worker_args = (
        f"worker --bootstrap {kafka.bootstrap} --influx-url {influx.url} --influx-version 2 "
        f"--influx-org {ORG} --influx-bucket {BUCKET}"
    )
    replay_args = (
        f"replay --dataset mitdb --records 100 --max-windows {MAX_WINDOWS} --speed 0 "
        f"--bootstrap {kafka.bootstrap}"
    )
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [exe, *worker_args.split()], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work
        )
    try:
        replay = subprocess.run(
            [exe, *replay_args.split()],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=FLOW_TIMEOUT_S,
        )
        assert replay.returncode == 0, f"replay failed:\n{replay.stdout}\n{replay.stderr}"
        windows = count_messages(kafka.bootstrap, "sci.windows")

        labels = points = -1
        deadline = time.monotonic() + FLOW_TIMEOUT_S
        while time.monotonic() < deadline:
            assert worker.poll() is None, f"worker exited with {worker.returncode}:\n{worker_log.read_text()}"
            labels = count_messages(kafka.bootstrap, "sci.labels")
            series = influxql(influx.url, 'SELECT count("seq") FROM "sci_window"')
            points = series[0]["values"][0][1] if series else 0
            if labels >= windows and points >= windows:
                break
            time.sleep(2)
        times = []
        for q in ('SELECT first("seq") FROM "sci_window"', 'SELECT last("seq") FROM "sci_window"'):
            rows = influxql(influx.url, q)
            times.append(int(rows[0]["values"][0][0]) if rows else 0)
        return {
            "windows": windows,
            "labels": labels,
            "points": points,
            "t0_ms": times[0],
            "t1_ms": times[1],
            "worker_log": worker_log,
        }
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)


# ---- tests --------------------------------------------------------------------------------------------


def test_kafka_init_script_creates_all_topics_and_raises_partitions(topics):
    assert topics["first"] == {"sci.windows": 3, **{t: 1 for t in TOPICS[1:]}}
    assert topics["second"] == {"sci.windows": 4, **{t: 1 for t in TOPICS[1:]}}


def test_dbrp_script_maps_sci_autogen_and_is_idempotent(influx, dbrp):
    first, second = dbrp
    assert "already exists" not in first
    assert "already exists" in second
    listing = influx.get_wrapped_container().exec_run(
        ["influx", "v1", "dbrp", "list", "--db", "sci", "--json"],
        environment={"INFLUX_HOST": "http://localhost:8086", "INFLUX_ORG": ORG, "INFLUX_TOKEN": TOKEN},
    )
    assert listing.exit_code == 0, listing.output.decode(errors="replace")
    (mapping,) = [m for m in json.loads(listing.output) if not m.get("virtual")]
    assert (mapping["database"], mapping["retention_policy"], mapping["default"]) == ("sci", "autogen", True)
    influxql(influx.url, "SHOW MEASUREMENTS")  # InfluxQL on db "sci" answers without error


def test_every_replayed_window_is_labelled_and_written_to_influx(flow):
    assert flow["windows"] == MAX_WINDOWS, "replay --max-windows 200 must produce 200 windows"
    assert flow["labels"] == flow["windows"], (
        f"{flow['labels']} labels for {flow['windows']} windows; worker log:\n"
        + flow["worker_log"].read_text()
    )
    assert flow["points"] == flow["windows"], (
        f"{flow['points']} sci_window points for {flow['windows']} windows"
    )


def test_dashboard_influxql_runs_through_the_dbrp_mapping(flow, influx):
    t0, t1 = flow["t0_ms"] - 1000, flow["t1_ms"] + 1000
    for title, ref, raw in dashboard_queries():
        query = substitute_macros(substitute_variables(raw), t0, t1)
        series = influxql(influx.url, query)  # asserts the query parses and runs
        # un-grouped counts filtered on a decision/correctness may legitimately be empty (e.g. no abstentions)
        optional = "= 'abstained'" in raw or '"correct" = true' in raw
        assert series or optional, f"{title} [{ref}] returned no data: {query}"
    windows_stat = next(p for p in DASHBOARD["panels"] if p["title"] == "Windows")
    query = substitute_macros(substitute_variables(windows_stat["targets"][0]["query"]), t0, t1)
    (total,) = influxql(influx.url, query)
    assert total["values"][0][1] == flow["windows"]


def test_grafana_provisions_datasource_and_dashboard_and_answers_queries(network, influx, dbrp, flow):
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    password = secrets.token_hex(12)
    grafana = (
        DockerContainer(SERVICES["grafana"]["image"])
        .with_network(network)
        .with_exposed_ports(3000)
        .with_envs(
            GF_SECURITY_ADMIN_USER="admin", GF_SECURITY_ADMIN_PASSWORD=password, SCI_INFLUX_TOKEN=TOKEN
        )
        .with_volume_mapping(str(REPO / "grafana" / "provisioning"), "/etc/grafana/provisioning", "ro")
        .with_volume_mapping(str(REPO / "grafana" / "dashboards"), "/etc/grafana/dashboards", "ro")
        .waiting_for(HttpWaitStrategy(3000, "/api/health").for_status_code(200).with_startup_timeout(180))
    )
    with grafana:
        base = f"http://{grafana.get_container_host_ip()}:{grafana.get_exposed_port(3000)}"
        auth = ("admin", password)

        health = requests.get(f"{base}/api/datasources/uid/sci-influxdb/health", auth=auth, timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "OK", health.text

        board = requests.get(f"{base}/api/dashboards/uid/sci-monitor", auth=auth, timeout=30)
        assert board.status_code == 200, board.text
        assert len(board.json()["dashboard"]["panels"]) == len(DASHBOARD["panels"])

        panels = {p["title"]: p for p in DASHBOARD["panels"]}
        # the accuracy stat: two InfluxQL counts (A, B) and a server-side math expression C = $A / $B
        queries = [as_sent(t) for t in panels["Accuracy (truth known)"]["targets"]]
        queries.append({**as_sent(panels["Windows"]["targets"][0]), "refId": "W"})
        body = {
            "from": str(max(0, flow["t0_ms"] - 1000)),
            "to": str(flow["t1_ms"] + 1000),
            "queries": queries,
        }
        answer = requests.post(f"{base}/api/ds/query", json=body, auth=auth, timeout=60)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        windows = results["W"]["frames"][0]["data"]["values"][1][0]
        assert windows == flow["windows"]
        accuracy = results["C"]["frames"][0]["data"]["values"][1][0]  # math expression $A / $B
        assert 0.0 < accuracy <= 1.0
