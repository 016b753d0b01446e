"""Static checks of the docker compose stack (no Docker needed): docker-compose.yml, .env.example,
Dockerfile, .dockerignore and the Grafana provisioning/dashboard files.

Covers what `docker compose config` would reject plus project rules: no default secrets, every required
variable documented, InfluxQL panels only use the sci_window schema of the conventions. When a docker CLI with
the compose plugin is installed, `docker compose config -q` runs as well (it needs no engine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DASHBOARD = REPO / "grafana" / "dashboards" / "sci-monitor.json"
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
ALERTING = REPO / "grafana" / "provisioning" / "alerting" / "sci-monitor.json"
DATASOURCE = REPO / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
DASHBOARD_PROVIDER = REPO / "grafana" / "provisioning" / "dashboards" / "sci-monitor.yml"

# InfluxDB schema from the project conventions: measurement -> (tags, fields)
MEASUREMENT = "sci_window"
TAGS = {"stream", "modality", "lead", "model", "decision", "predicted", "reason", "quality"}
FIELDS = {"sp", "delta_sp", "passes", "max_prob", "latency_ms", "seq", "alert", "novelty", "confidence", "truth",
          "correct"}
SCHEMA = {
    MEASUREMENT: (TAGS, FIELDS),
    "sci_trust": ({"scope", "stream", "modality"},
                  {"windows_per_s", "abstain_rate", "alert_rate", "mean_passes", "n", "n_truth", "accuracy", "auroc",
                   "ece", "passes_right", "passes_wrong", "sp_mean", "novelty_mean"}),
    "sci_calibration": ({"bin"}, {"confidence", "accuracy", "n"}),
    "sci_drift": ({"stream", "modality", "signal"}, {"drift", "mean_before", "mean_after", "width", "seq"}),
    "sci_batch": ({"worker"}, {"size", "controller_ms", "passes"}),
}
TOPICS = ("sci.windows", "sci.labels", "sci.escalations", "sci.alerts", "sci.deadletter", "sci.drift")

TOP_LEVEL_KEYS = {
    "version",
    "name",
    "include",
    "services",
    "networks",
    "volumes",
    "configs",
    "secrets",
    "models",
}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, ${NAME:+alt}, ${NAME+alt}
VAR_RE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)"
)
REQUIRED_REF_RE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")
DURATION_RE = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")


# ---- helpers -------------------------------------------------------------------------------------------


def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def compose() -> dict:
    return yaml.safe_load(compose_text())


def var_refs(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator or None, argument) for every ${...} reference; `$$` escapes are skipped."""
    refs = []
    for m in VAR_RE.finditer(text):
        if m.group(0) == "$$":
            continue
        assert m.group("bare") is None, f"use ${{{m.group('bare')}}} (braces) or $$ to escape: {m.group(0)}"
        refs.append((m.group("name"), m.group("op"), m.group("arg") or ""))
    return refs


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style interpolation of `text` with `env` (the subset of the spec this project uses)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            return arg if value is None or (op == ":-" and value == "") else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return VAR_RE.sub(sub, text)


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """.env.example -> (set variables, commented-out `# NAME=value` optional variables)."""
    active, commented = {}, {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            active[m[1]] = m[2]
        elif m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=(.*)$", line):
            commented[m[1]] = m[2].strip().strip('"')
    return active, commented


def resolved() -> dict:
    """docker-compose.yml interpolated with the .env.example values (what `up` would see)."""
    active, _ = env_example()
    return yaml.safe_load(interpolate(compose_text(), active))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def script(service: dict) -> str:
    cmd = service["command"]
    return cmd if isinstance(cmd, str) else "\n".join(cmd)


def influx_targets(panel: dict) -> list[dict]:
    return [t for t in panel.get("targets", []) if (t.get("datasource") or {}).get("type") != "__expr__"]


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def check_influxql(query: str) -> None:
    """Assert an InfluxQL query reads one measurement of the schema and only its tags and fields."""
    m = re.search(r'FROM "(\w+)"', query)
    assert m and m[1] in SCHEMA, f"query must read a measurement of {sorted(SCHEMA)}: {query}"
    tags, fields = SCHEMA[m[1]]
    quoted = set(re.findall(r'"([^"]+)"', query))
    aliases = set(re.findall(r'AS "([^"]+)"', query))
    unknown = quoted - tags - fields - aliases - {m[1]}
    assert not unknown, f"unknown identifiers {unknown} in: {query}"
    for fn_arg in re.findall(r'\b\w+\(\s*"([^"]+)"', query):
        assert fn_arg in fields, f"{fn_arg!r} is aggregated/selected but is not a field: {query}"
    select = re.match(r"\s*SELECT\s+(.*?)\s+FROM\s", query, re.S)
    if select:
        for ident in set(re.findall(r'"([^"]+)"', select[1])) - aliases:
            assert ident in fields, f"SELECT uses {ident!r}, not a field: {query}"
    group = re.search(r"GROUP BY (.*?)(?: fill\(| ORDER BY| LIMIT|$)", query)
    if group:
        for ident in re.findall(r'"([^"]+)"', group[1]):
            assert ident in tags, f"GROUP BY {ident!r}, not a tag: {query}"
    for ident in re.findall(r'"([^"]+)"\s*=~', query):
        assert ident in tags, f"regex match on {ident!r}, not a tag: {query}"
    for ident, value in re.findall(r'"([^"]+)"\s*=\s*(\'[^\']*\'|true|false)', query):
        if value.startswith("'"):
            assert ident in tags | {"truth"}, f"string comparison on {ident!r}: {query}"
        else:
            assert ident == "correct", f"boolean comparison on {ident!r}: {query}"


# ---- docker-compose.yml structure ---------------------------------------------------------------------


def test_compose_top_level_keys_and_services():
    doc = compose()
    unknown = {k for k in doc if k not in TOP_LEVEL_KEYS and not k.startswith("x-")}
    assert not unknown, f"unknown top-level keys {unknown}"
    assert "version" not in doc, "the compose spec made `version` obsolete; drop it"
    services = doc["services"]
    expected = {"kafka", "kafka-init", "influxdb", "influxdb-dbrp", "grafana", "worker", "replayer"}
    assert expected <= set(services)
    declared_volumes = set(doc.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"service {name} needs image or build"
        assert "container_name" not in svc, f"{name}: container_name prevents scaling"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith(("/", ".", "$", "~")):
                assert source in declared_volumes, f"{name}: named volume {source} is not declared"


def test_images_are_pinned():
    for name, svc in compose()["services"].items():
        image = svc.get("image")
        if image is None or "build" in svc:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin the image tag, got {image!r}"
        assert re.match(r"^\d+\.\d+\.\d+$", tag), f"{name}: use a full x.y.z tag, got {image!r}"
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["influxdb"]["image"].startswith("influxdb:2.")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_depends_on_targets_exist_and_conditions_are_valid():
    services = compose()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            condition = spec.get("condition", "service_started")
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {target}: bad condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} healthy: no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot: restart 'no'"


def test_healthchecks_are_well_formed():
    services = compose()["services"]
    for name in ("kafka", "influxdb", "grafana"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck"
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        if hc is None:
            continue
        assert set(hc) <= {
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        }
        test = hc["test"]
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL", "NONE") and len(test) >= 2, f"{name}: bad test {test}"
            assert all(isinstance(part, str) and part for part in test)
        else:
            assert isinstance(test, str) and test
        for key in ("interval", "timeout", "start_period", "start_interval"):
            if key in hc:
                assert DURATION_RE.match(str(hc[key])), f"{name}: bad {key} {hc[key]!r}"
        assert isinstance(hc.get("retries", 3), int) and hc.get("retries", 3) > 0


def test_variable_references_have_a_default_or_are_required():
    refs = var_refs(compose_text())
    assert refs, "expected ${VAR} references in docker-compose.yml"
    for name, op, arg in refs:
        assert op in (":-", ":?"), f"${{{name}}} needs a default (:-) or must be required (:?)"
        if op == ":?":
            assert arg.strip(), f"${{{name}:?}} needs a message that says what to set"
        assert "$" not in arg, f"nested interpolation in ${{{name}...}} is not supported here"
    required = {n for n, op, _ in refs if op == ":?"}
    assert {"SCI_INFLUX_TOKEN", "SCI_INFLUX_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required


def test_env_example_documents_every_variable_with_the_compose_default():
    active, commented = env_example()
    refs = var_refs(compose_text())
    for name, op, arg in refs:
        if op == ":?":
            assert active.get(name), f"required {name} must be set (placeholder) in .env.example"
        else:
            assert name in commented or name in active, f"optional {name} is not listed in .env.example"
            if name in commented:
                assert commented[name] == arg, (
                    f".env.example shows {name}={commented[name]}, compose uses {arg}"
                )
    used = {n for n, _, _ in refs}
    assert set(active) | set(commented) <= used, "variables in .env.example that compose never uses"
    for name, value in active.items():
        if any(word in name for word in SECRET_WORDS):
            assert value.startswith("change-me"), f"{name} must be a change-me placeholder in .env.example"


def test_no_literal_secrets():
    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if any(word in str(key).upper() for word in SECRET_WORDS) and not isinstance(
                    value, dict | list
                ):
                    assert isinstance(value, str) and REQUIRED_REF_RE.match(value), (
                        f"{path}.{key} must be a required ${{VAR:?...}} reference, got {value!r}"
                    )
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str) and re.match(r"^[A-Za-z_]\w*=", item):
                    key, value = item.split("=", 1)
                    walk({key: value}, f"{path}[{i}]")
                else:
                    walk(item, f"{path}[{i}]")
        elif isinstance(node, str):
            assert not re.search(r"--(token|password)[ =](?!\"?\$)", node), f"literal credential in {path}"

    walk(compose(), "compose")


def test_resolved_config_with_env_example():
    doc = resolved()
    services = doc["services"]
    replicas = services["worker"]["deploy"]["replicas"]
    assert int(replicas) >= 1
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert re.match(r"^(\d+\.\d+\.\d+\.\d+:)?\d+:\d+$", str(port)), f"{name}: bad port mapping {port}"
    # worker: conventions' SCI_* names pointing at the compose services
    worker = environment(services["worker"])
    assert worker["SCI_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert worker["SCI_INFLUX_URL"] == "http://influxdb:8086"
    assert worker["SCI_INFLUX_VERSION"] == "2"
    active, _ = env_example()
    for var in ("SCI_INFLUX_ORG", "SCI_INFLUX_BUCKET", "SCI_INFLUX_TOKEN"):
        assert worker[var] == active[var]
    assert services["worker"]["command"] == ["worker"]
    deps = services["worker"]["depends_on"]
    assert deps["kafka"]["condition"] == deps["influxdb"]["condition"] == "service_healthy"
    # the replayer never sees Influx credentials; it reads the recordings read-only
    replayer = services["replayer"]
    assert not any(k.startswith("SCI_INFLUX") for k in environment(replayer))
    cmd = shlex.split(replayer["command"]) if isinstance(replayer["command"], str) else replayer["command"]
    assert cmd[:3] == ["replay", "--dataset", "mitdb"]
    records = cmd[cmd.index("--records") + 1 : cmd.index("--speed")]
    assert records == ["100", "105", "200", "213", "233"], (
        "SCI_REPLAY_RECORDS must split into one arg per record"
    )
    assert cmd[cmd.index("--bootstrap") + 1] == "kafka:9092"
    source, target, mode = replayer["volumes"][0].rsplit(":", 2)
    assert (source, target, mode) == ("../shared/data", "/data", "ro")
    assert environment(replayer)["SCI_DATA_DIR"] == "/data"
    assert int(environment(replayer)["SCI_INPUT_PARTITIONS"]) == 6


def test_kafka_is_single_node_kraft_without_topic_auto_create():
    services = resolved()["services"]
    env = environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert listeners <= set(p.split(":")[0] for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert len(env["CLUSTER_ID"]) == 22
    init = services["kafka-init"]
    text = script(init)
    for topic in TOPICS:
        assert topic in text, f"kafka-init does not create {topic}"
    assert "--if-not-exists" in text and "--replication-factor 1" in text
    assert environment(init)["INPUT_PARTITIONS"] == "6"


def test_influxdb_setup_and_dbrp_job():
    services = resolved()["services"]
    env = environment(services["influxdb"])
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("USERNAME", "PASSWORD", "ORG", "BUCKET", "ADMIN_TOKEN"):
        assert env[f"DOCKER_INFLUXDB_INIT_{key}"], f"DOCKER_INFLUXDB_INIT_{key} is empty"
    assert len(env["DOCKER_INFLUXDB_INIT_PASSWORD"]) >= 8, "influx setup needs an 8+ character password"
    dbrp = services["influxdb-dbrp"]
    dbrp_env = environment(dbrp)
    assert (dbrp_env["DB"], dbrp_env["RP"]) == ("sci", "autogen")
    assert dbrp_env["BUCKET"] == env["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert dbrp_env["INFLUX_TOKEN"] == env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert "influx v1 dbrp create" in script(dbrp)


def test_one_shot_scripts_are_plain_sh_with_escaped_dollars():
    services = compose()["services"]
    for name in ("kafka-init", "influxdb-dbrp"):
        assert services[name]["entrypoint"] == ["/bin/sh", "-ec"], f"{name}: run the script with sh -e"
        text = script(services[name])
        assert "[[" not in text and not re.search(r"\b\w+=\(", text), f"{name} uses bash-only syntax"
        # every shell `$` is escaped as `$$`, so compose leaves the script alone
        assert not [ref for ref in var_refs(text)], f"{name}: compose would interpolate {var_refs(text)}"
        assert "$$" in text


def test_mounted_host_paths_exist():
    doc = compose()
    mounts = {}
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            parts = vol.split(":")
            if parts[0].startswith("./"):
                assert (REPO / parts[0]).is_dir(), f"{name} mounts {parts[0]}, which is missing in the repo"
                assert parts[-1] == "ro", f"{name}: mount {parts[0]} read-only"
                mounts[parts[0]] = parts[1]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"][0]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    home = environment(doc["services"]["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./grafana/dashboards']}/{DASHBOARD.name}"


# ---- Grafana -----------------------------------------------------------------------------------------


def test_datasource_provisioning_uses_influxql_and_a_token_from_the_environment():
    doc = yaml.safe_load(DATASOURCE.read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "influxdb" and ds["uid"] == "sci-influxdb"
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == "sci"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    header = ds["secureJsonData"]["httpHeaderValue1"]
    m = re.fullmatch(r"Token \$\{(\w+)\}", header)
    assert m, f"the token must come from an environment variable, got {header!r}"
    grafana_env = environment(compose()["services"]["grafana"])
    assert REQUIRED_REF_RE.match(grafana_env[m[1]] or ""), f"grafana service must receive {m[1]} from .env"
    assert "token" not in json.dumps(ds["jsonData"]).lower()


def test_dashboard_provider_parses():
    doc = yaml.safe_load(DASHBOARD_PROVIDER.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def _dashboard(name: str) -> dict:
    return json.loads((REPO / "grafana" / "dashboards" / name).read_text())


def test_dashboards_and_alert_rules_are_the_rendering_of_the_default_settings():
    from streams.grafana import rendered
    from streams.settings import load_settings

    files = rendered(load_settings(env={}))
    assert {p.name for p in DASHBOARDS} == {Path(k).name for k in files if k.startswith("dashboards/")}
    for rel, text in files.items():
        assert (REPO / "grafana" / rel).read_text() == text, f"grafana/{rel} is stale: run `sci-monitor grafana render`"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_query_the_schema(path):
    dashboard = json.loads(path.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    ds_uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    n_queries = 0
    for p in panels:
        if p["type"] == "row":
            continue
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"] == {"type": "influxdb", "uid": ds_uid}
        targets = p.get("targets", [])
        assert targets, f"panel {p['title']!r} has no query"
        ref_ids = {t["refId"] for t in targets}
        assert len(ref_ids) == len(targets), f"panel {p['title']!r}: duplicate refIds"
        for t in targets:
            if t["datasource"]["type"] == "__expr__":
                used = set(re.findall(r"\$(\w+)", t["expression"]))
                assert used and used <= ref_ids - {t["refId"]}, f"{p['title']!r}: bad expression refs {used}"
                continue
            assert t["datasource"] == {"type": "influxdb", "uid": ds_uid}
            assert t.get("rawQuery") is True, f"{p['title']!r}: use raw InfluxQL"
            query = t["query"]
            check_influxql(query)
            assert "$timeFilter" in query, f"{p['title']!r}: query ignores the time picker"
            for var in variables:  # every dashboard variable narrows the panels that can use it
                if var == "modality" and "sci_window" not in query:
                    continue
                if var == "stream" and ("sci_batch" in query or "sci_calibration" in query
                                        or "'fleet'" in query):
                    continue
                assert f'"{var}" =~ /^${var}$/' in query, f"{p['title']!r} ignores ${var}: {query}"
            for tag in re.findall(r"\$tag_(\w+)", t.get("alias", "")):
                assert f'"{tag}"' in query.split("GROUP BY", 1)[-1], f"alias $tag_{tag} needs GROUP BY {tag}"
            n_queries += 1
    for a in dashboard["annotations"]["list"]:
        if a.get("datasource", {}).get("type") == "influxdb":
            assert a["datasource"]["uid"] == ds_uid
            check_influxql(a["query"])
            assert "$timeFilter" in a["query"] and a["textColumn"] in a["query"]
    assert n_queries >= 6


def test_dashboards_cover_the_topics():
    titles = {path.stem: " | ".join(panel["title"] for panel in all_panels(json.loads(path.read_text()))).lower()
              for path in DASHBOARDS}
    for topic in ("windows/s", "predicted class", "abstention", "δsp", "passes", "latency p95", "sp heatmap"):
        assert topic in titles["sci-monitor"], f"no overview panel about {topic}"
    for topic in ("online accuracy", "auroc", "calibration", "ece", "passes on wrong vs right", "drift"):
        assert topic in titles["sci-trust"], f"no trust panel about {topic}"
    for topic in ("batch size", "controller time per batch"):
        assert topic in titles["sci-compute"], f"no compute panel about {topic}"
    kinds = {p["type"] for p in all_panels(_dashboard("sci-monitor.json"))}
    assert {"timeseries", "stat", "histogram", "heatmap"} <= kinds
    drill = _dashboard("sci-stream.json")
    names = {a["name"] for a in drill["annotations"]["list"]}
    assert {"Escalations", "ΔSP alerts", "Drift"} <= names


def test_windows_per_second_stat_is_not_an_average_with_zeros():
    (panel,) = [p for p in all_panels(_dashboard("sci-monitor.json")) if p["title"] == "Windows/s"]
    (target,) = panel["targets"]
    assert "fill(none)" in target["query"] and "fill(0)" not in target["query"]
    assert "max" in panel["options"]["reduceOptions"]["calcs"]


def test_dashboard_template_variables():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for v in dashboard["templating"]["list"]:
            name = v["name"]
            assert v["type"] == "query" and v["datasource"]["uid"] == "sci-influxdb"
            assert re.fullmatch(
                rf'SHOW TAG VALUES FROM "{MEASUREMENT}" WITH KEY = "{name}"( WHERE .*)?', v["query"]
            )
            for ident in re.findall(r'"([^"]+)"', v["query"]):
                assert ident in TAGS | {MEASUREMENT}
    overview = {v["name"]: v for v in _dashboard("sci-monitor.json")["templating"]["list"]}
    assert {"stream", "modality"} <= set(overview)
    assert all(overview[n]["includeAll"] and overview[n]["multi"] for n in ("stream", "modality"))
    (drill,) = _dashboard("sci-stream.json")["templating"]["list"]
    assert drill["name"] == "stream" and not drill["multi"], "the drill-down shows one stream"


def test_dashboard_thresholds_match_the_worker_settings():
    from streams.settings import load_settings

    s = load_settings(env={})
    worker = environment(resolved()["services"]["worker"])
    # ΔSP levels come from each model's card unless the operator overrides them: compose passes no default
    assert (s.alert_threshold, s.alert_critical) == (None, None)
    assert not worker.get("SCI_ALERT_THRESHOLD") and not worker.get("SCI_ALERT_CRITICAL")  # empty: the cards
    for name in ("sci-monitor.json", "sci-stream.json"):  # alerts counted from the stored field, no level restated
        (panel,) = [p for p in all_panels(_dashboard(name)) if "ΔSP" in p["title"]]
        assert any('"alert" >= 1' in t["query"] for t in panel["targets"])
        assert "thresholds" not in panel["fieldConfig"]["defaults"]
    (latency,) = [p for p in all_panels(_dashboard("sci-monitor.json")) if p["title"] == "Latency p95 by modality"]
    assert latency["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == s.latency_p95_max_ms
    (alerts,) = [a for a in _dashboard("sci-stream.json")["annotations"]["list"] if a["name"] == "ΔSP alerts"]
    assert '"alert" >= 1' in alerts["query"]


# ---- Grafana alerting --------------------------------------------------------------------------------------
def _rules() -> dict[str, dict]:
    doc = json.loads(ALERTING.read_text())
    return {r["uid"]: r for g in doc["groups"] for r in g["rules"]}


def _threshold_of(rule: dict) -> tuple[str, float]:
    (cond,) = [d for d in rule["data"] if d["refId"] == rule["condition"]]
    assert cond["model"]["type"] == "threshold"
    (c,) = cond["model"]["conditions"]
    return c["evaluator"]["type"], c["evaluator"]["params"][0]


def test_alerting_provisioning_parses_and_references_only_the_provisioned_datasource():
    doc = yaml.safe_load(ALERTING.read_text())  # JSON is YAML: Grafana reads either
    assert doc["apiVersion"] == 1
    ds_uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    (group,) = doc["groups"]
    assert group["folder"] and group["name"] and DURATION_RE.match(group["interval"])
    uids = [r["uid"] for r in group["rules"]]
    assert len(uids) == len(set(uids)) and all(len(u) <= 40 for u in uids)
    dashboards = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    for rule in group["rules"]:
        assert rule["title"] and rule["annotations"]["summary"]
        assert rule["noDataState"] in ("NoData", "Alerting", "OK")
        assert rule["execErrState"] in ("Error", "Alerting", "OK")
        assert DURATION_RE.match(rule["for"]) or rule["for"] == "0s"
        assert rule["dashboardUid"] in dashboards
        refs = {d["refId"] for d in rule["data"]}
        assert rule["condition"] in refs and len(refs) == len(rule["data"])
        for d in rule["data"]:
            model = d["model"]
            assert model["refId"] == d["refId"]
            if d["datasourceUid"] == "__expr__":
                assert model["datasource"] == {"type": "__expr__", "uid": "__expr__"}
                used = set(re.findall(r"\$?(\b[A-Z]\b)", model["expression"]))
                assert used and used <= refs - {d["refId"]}, f"{rule['uid']}: bad expression {model['expression']}"
            else:
                assert d["datasourceUid"] == ds_uid and model["datasource"] == {"type": "influxdb", "uid": ds_uid}
                assert model["rawQuery"] is True and "$timeFilter" in model["query"]
                check_influxql(model["query"])
                assert d["relativeTimeRange"]["from"] > 0
    (cp,) = doc["contactPoints"]
    (receiver,) = cp["receivers"]
    assert receiver["type"] == "webhook" and receiver["settings"]["url"] == "${SCI_ALERT_WEBHOOK_URL}"
    (policy,) = doc["policies"]
    assert policy["receiver"] == cp["name"]
    grafana_env = environment(compose()["services"]["grafana"])
    assert "SCI_ALERT_WEBHOOK_URL" in grafana_env


def test_alert_rule_thresholds_equal_the_settings():
    from streams.settings import load_settings

    s = load_settings(env={})
    rules = _rules()
    assert set(rules) == {"sci-escalation-rate", "sci-alert-rate", "sci-worker-silence", "sci-latency", "sci-drift"}
    assert _threshold_of(rules["sci-escalation-rate"]) == ("gt", s.escalation_rate_max)
    assert _threshold_of(rules["sci-alert-rate"]) == ("gt", s.alert_rate_max)
    assert '"alert" >= 1' in rules["sci-alert-rate"]["data"][0]["model"]["query"]
    assert _threshold_of(rules["sci-latency"]) == ("gt", s.latency_p95_max_ms)
    assert _threshold_of(rules["sci-worker-silence"]) == ("lt", 1)
    assert rules["sci-worker-silence"]["data"][0]["relativeTimeRange"]["from"] == s.silence_s
    assert rules["sci-worker-silence"]["noDataState"] == "Alerting"
    assert _threshold_of(rules["sci-drift"]) == ("gt", 0)
    for uid in ("sci-escalation-rate", "sci-alert-rate", "sci-latency", "sci-drift"):
        assert rules[uid]["data"][0]["relativeTimeRange"]["from"] == s.rule_window_s
    # a different configuration renders different rules: the thresholds are not copies
    from streams.grafana import alert_rules

    other = load_settings(env={"SCI_ALERT_RATE_MAX": "0.25", "SCI_ESCALATION_RATE_MAX": "0.2"})
    changed = {r["uid"]: r for r in alert_rules(other)}
    assert _threshold_of(changed["sci-escalation-rate"]) == ("gt", 0.2)
    assert _threshold_of(changed["sci-alert-rate"]) == ("gt", 0.25)


# ---- image --------------------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_cpu_image_with_the_pinned_torch():
    text = (REPO / "Dockerfile").read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch==")]
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in instructions
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r"pip install \.", text), "the image must install the project"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert instructions.index(f"USER {users[-1]}") < instructions.index('ENTRYPOINT ["sci-monitor"]')
    # the compose file's command lists pass subcommands to this entrypoint
    assert compose()["services"]["worker"]["command"][0] == "worker"


def test_dockerignore_keeps_secrets_and_venv_out_but_the_packages_in():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip()[:1] not in ("", "#")
    ]
    for must in (".git", ".venv", ".env", ".state"):
        assert must in patterns, f".dockerignore must exclude {must}"
    for needed in ("models", "controller", "streams", "sci_monitor", "pyproject.toml", "models/checkpoints"):
        assert needed not in patterns and f"{needed}/" not in patterns


# ---- docker compose itself (only where the compose plugin is installed) -------------------------------


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and re.search(r"v?2\.\d+", probe.stdout):
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("docker compose v2 CLI (plugin or standalone) is not installed; static checks above only")
    run = subprocess.run(
        [
            *cli,
            "--project-directory",
            str(REPO),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(ENV_EXAMPLE),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    referenced = {name for name, _, _ in var_refs(compose_text())}
    clean_env = {k: v for k, v in os.environ.items() if k not in referenced}
    missing = subprocess.run(
        [
            *cli,
            "--project-directory",
            str(REPO),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            "/dev/null",
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
    )
    assert missing.returncode != 0 and "in .env" in missing.stderr, "required variables must fail loudly"


def test_gpu_profile_worker_reserves_a_gpu_and_runs_cuda_torch():
    services = resolved()["services"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"], "the GPU worker must stay out of a plain `docker compose up`"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert environment(gpu)["SCI_DEVICE"] == "cuda"  # cuda, not auto: no silent CPU fallback
    assert gpu["build"]["args"]["TORCH_INDEX"] == "https://pypi.org/simple"  # PyPI's Linux torch wheels are CUDA
    assert gpu["image"] != services["worker"]["image"]
    # same Kafka, topics and consumer group as the CPU workers, same InfluxDB credentials
    for var, value in environment(services["worker"]).items():
        if var != "SCI_DEVICE":
            assert environment(gpu).get(var) == value, var
    assert gpu["healthcheck"] == services["worker"]["healthcheck"]
    assert 'ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu' in (REPO / "Dockerfile").read_text()
