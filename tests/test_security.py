"""Security: Kafka SASL/SSL options, secrets kept out of logs, .env.example placeholders refused."""

from __future__ import annotations

import io
import logging

import faust
import pytest

from streams.security import (
    check_secrets,
    faust_credentials,
    install_log_redaction,
    kafka_client_config,
    redact,
    secret_values,
)
from streams.settings import SettingsError, load_settings


def test_redact_url_passwords_and_secret_values() -> None:
    assert redact("http://u:p%40ss@h:1/x and https://a:b@c") == "http://u:***@h:1/x and https://a:***@c"
    assert redact("kafka://broker:9092 http://host:8086/ping") == "kafka://broker:9092 http://host:8086/ping"
    assert redact("Authorization: Token s3cr3t-s3cr3t", ["s3cr3t-s3cr3t"]) == "Authorization: Token ***"
    assert redact("a longer-secret b", ["longer", "longer-secret"]) == "a *** b"  # longest first


def test_every_log_record_is_redacted_including_tracebacks() -> None:
    before = logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("sci_monitor.test_security")
    logger.addHandler(handler)
    try:
        install_log_redaction(["tok-123456"])
        install_log_redaction(["pw-abcdef"])  # second call adds secrets to the same factory
        logger.warning("write to %s failed", "http://sci:pw-abcdef@influx:8086")
        logger.warning("%d%% of %d windows, %r", 50, 8, {"token": "tok-123456"})
        try:
            raise ConnectionError("token tok-123456 refused by http://x:y@h")
        except ConnectionError:
            logger.exception("sink down")
    finally:
        logging.setLogRecordFactory(before)
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "pw-abcdef" not in text and "tok-123456" not in text and ":y@" not in text
    assert "http://sci:***@influx:8086" in text and "token *** refused" in text and "Traceback" in text
    assert "50% of 8 windows" in text and "'token': '***'" in text


def test_kafka_security_settings_reach_both_clients(tmp_path) -> None:
    assert kafka_client_config(load_settings(env={})) == {}
    assert faust_credentials(load_settings(env={})) is None
    env = {"SCI_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SCI_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "SCI_KAFKA_SASL_USERNAME": "sci", "SCI_KAFKA_SASL_PASSWORD": "pw"}
    s = load_settings(env=env)
    assert kafka_client_config(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                      "sasl_plain_username": "sci", "sasl_plain_password": "pw"}
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.mechanism.value == "SCRAM-SHA-512"
    assert (creds.username, creds.password, creds.protocol.value) == ("sci", "pw", "SASL_PLAINTEXT")
    assert s.masked()["kafka_sasl_password"] == "***" and secret_values(s) == ["pw"]
    ssl_s = load_settings(env={"SCI_KAFKA_SECURITY_PROTOCOL": "SSL", "SCI_KAFKA_SSL_CAFILE": "/ca.pem"})
    assert kafka_client_config(ssl_s) == {"security_protocol": "SSL", "ssl_cafile": "/ca.pem"}
    assert isinstance(faust_credentials(load_settings(env={"SCI_KAFKA_SECURITY_PROTOCOL": "SSL"})),
                      faust.SSLCredentials)
    with pytest.raises(SettingsError, match="expected one of PLAINTEXT"):
        load_settings(env={"SCI_KAFKA_SECURITY_PROTOCOL": "TLS"})


@pytest.mark.parametrize("env", [
    {"SCI_INFLUX_TOKEN": "change-me-influx-operator-token"},
    {"SCI_INFLUX_PASSWORD": "CHANGE-ME"},
    {"SCI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SCI_KAFKA_SASL_USERNAME": "u", "SCI_KAFKA_SASL_PASSWORD": "change-me"},
    {"SCI_INFLUX_URL": "http://sci:change-me@influx:8086"},
])
def test_placeholders_from_env_example_are_refused(env) -> None:
    with pytest.raises(SettingsError, match="placeholder 'change-me'"):
        check_secrets(load_settings(env=env))


def test_sasl_without_credentials_is_refused_and_real_secrets_pass() -> None:
    with pytest.raises(SettingsError, match="needs kafka_sasl_username"):
        check_secrets(load_settings(env={"SCI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}))
    check_secrets(load_settings(env={"SCI_INFLUX_TOKEN": "9f2c4e", "SCI_INFLUX_PASSWORD": "x"}))


def _preflight(env: dict[str, str]):
    import subprocess
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    svc = doc["services"]["preflight"]
    script = svc["command"][0].replace("$$", "$")  # what compose hands to the shell
    return subprocess.run(["/bin/sh", "-ec", script], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=10), doc


def test_compose_preflight_refuses_the_placeholders_before_anything_starts() -> None:
    result, doc = _preflight({"SCI_INFLUX_TOKEN": "change-me-influx-operator-token", "GRAFANA_ADMIN_PASSWORD": "ok"})
    assert result.returncode == 1 and "SCI_INFLUX_TOKEN" in result.stderr
    assert "change-me-influx" not in result.stderr + result.stdout  # names, never values
    result, _ = _preflight({"SCI_INFLUX_TOKEN": "3c9d", "GRAFANA_ADMIN_PASSWORD": "pw"})
    assert result.returncode == 0, result.stderr
    for name in ("influxdb", "worker"):  # the worker waits for InfluxDB, which waits for the preflight
        deps = doc["services"][name]["depends_on"]
        assert "preflight" in deps or deps["influxdb"]["condition"] == "service_healthy"
    assert doc["services"]["influxdb"]["depends_on"]["preflight"]["condition"] == "service_completed_successfully"
