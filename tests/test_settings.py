"""Settings: defaults, precedence (flags > env > TOML > defaults), TOML forms, masking, bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sci.toml"
    path.write_text(text)
    return path


def test_defaults_talk_to_the_local_stack():
    s = load_settings(env={})
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.influx_url == "http://127.0.0.1:18086"
    assert (s.influx_version, s.influx_db, s.influx_rp, s.influx_bucket) == ("auto", "sci", "autogen", "sci")
    assert (s.batch_size, s.batch_timeout_s) == (64, 0.05)
    assert (s.alert_threshold, s.alert_critical) == (None, None)  # unset: each card's ΔSP alert levels
    assert s.state_dir == Path.cwd() / ".state"  # the working directory, never the installed package
    assert s.sink_max_attempts == 0  # hold a batch until it is written
    assert s.served_models == {("ecg", "MLII"): "mitdb", ("vibration", "DE"): "cwru"}
    assert s.topics == {"windows": "sci.windows", "labels": "sci.labels", "escalations": "sci.escalations",
                        "alerts": "sci.alerts", "deadletter": "sci.deadletter", "drift": "sci.drift"}
    assert s.topic_partitions == {"sci.windows": 4, "sci.labels": 1, "sci.escalations": 1, "sci.alerts": 1,
                                  "sci.deadletter": 1, "sci.drift": 1}
    assert s == Settings()


def test_precedence_flags_over_env_over_toml_over_defaults(tmp_path):
    toml = write(tmp_path, """
batch_timeout_s = 0.2
[worker]
batch_size = 10
alert_threshold = 0.1
[influx]
db = "from_toml"
""")
    env = {"SCI_BATCH_SIZE": "20", "SCI_INFLUX_DB": "from_env", "PATH": "/usr/bin"}
    s = load_settings(toml, overrides={"batch_size": "30", "influx_db": None}, env=env)
    assert s.batch_size == 30  # flag beats env and TOML
    assert s.influx_db == "from_env"  # None override is "not given"; env beats TOML
    assert s.batch_timeout_s == 0.2  # TOML (flat key) beats default
    assert s.alert_threshold == 0.1  # TOML section key
    assert s.alert_critical is None  # default: the cards' level
    assert s.influx_bucket == "from_env"  # derived from the db when unset


def test_ports_derive_bootstrap_and_url_unless_given():
    s = load_settings(env={"SCI_KAFKA_PORT": "29092", "SCI_INFLUX_PORT": "28086"})
    assert (s.kafka_bootstrap, s.influx_url) == ("127.0.0.1:29092", "http://127.0.0.1:28086")
    s = load_settings(env={"SCI_KAFKA_PORT": "29092", "SCI_KAFKA_BOOTSTRAP": "k1:9092,k2:9093",
                           "SCI_INFLUX_URL": "https://influx.example:8086/"})
    assert (s.kafka_bootstrap, s.kafka_port) == ("k1:9092,k2:9093", 29092)
    assert s.influx_url == "https://influx.example:8086"


def test_topic_prefix_and_partitions():
    s = load_settings(overrides={"topic_prefix": "lab-2", "input_partitions": 8, "output_partitions": 2},
                      env={})
    assert s.topics["windows"] == "lab-2.windows" and s.topics["deadletter"] == "lab-2.deadletter"
    assert s.topic_partitions["lab-2.windows"] == 8 and s.topic_partitions["lab-2.alerts"] == 2


def test_toml_paths_are_relative_to_the_file_and_types_are_checked(tmp_path):
    toml = write(tmp_path, '[stack]\nstate_dir = "st"\ntimeout_s = 5\n[worker]\ndata_dir = "../data"\n'
                           '[influx]\nversion = 1\n')
    s = load_settings(toml, env={})
    assert s.state_dir == tmp_path / "st"
    assert s.data_dir == (tmp_path / "../data").resolve()
    assert s.stack_timeout_s == 5.0 and isinstance(s.stack_timeout_s, float)
    assert s.influx_version == "1"


def test_masked_hides_set_secrets_only():
    s = load_settings(env={"SCI_INFLUX_PASSWORD": "hunter2", "SCI_INFLUX_URL": "http://me:pw@db:8086"})
    m = s.masked()
    assert m["influx_password"] == "***" and m["influx_token"] == ""
    assert m["influx_url"] == "http://me:***@db:8086"
    assert m["state_dir"] == str(Path.cwd() / ".state")
    assert "hunter2" not in repr(m) and ":pw@" not in repr(m)
    assert set(m) == {f.name for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"batch_size": "many"}, "option batch_size: bad value 'many' for batch_size (expected an integer)"),
    ({"batch_size": 0}, "must be >= 1"),
    ({"batch_timeout_s": "nan"}, "expected a finite number"),
    ({"kafka_port": 70000}, "expected a TCP port 1..65535"),
    ({"influx_version": "3"}, "expected one of auto, 1, 2"),
    ({"device": "tpu"}, "expected one of auto, cpu, cuda"),
    ({"influx_url": "127.0.0.1:8086"}, "expected an http:// or https:// URL"),
    ({"kafka_bootstrap": "localhost"}, "expected host:port[,host:port]"),
    ({"topic_prefix": "a b"}, "expected letters, digits"),
    ({"alert_threshold": 0.6, "alert_critical": "0.5"}, "alert_threshold (0.6) must not exceed alert_critical (0.5)"),
    ({"alert_critical": "-1"}, "bad value -1.0 for alert_critical (must be >= 0)"),
    ({"alert_threshold": "high"}, "bad value 'high' for alert_threshold (expected a number)"),
    ({"influx_rpc_port": 18086}, "influx_port and influx_rpc_port must differ"),
    ({"batch_sise": 3}, "unknown setting 'batch_sise'"),
    ({"models": "eeg=x"}, "bad models entry 'eeg=x'"),
    ({"models": "ecg"}, "expected modality[:lead]=checkpoint"),
    ({"sink_max_attempts": -1}, "must be >= 0"),
])
def test_bad_overrides_raise_one_line_errors(overrides, message):
    with pytest.raises(SettingsError) as info:
        load_settings(overrides=overrides, env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_alert_levels_are_optional_overrides():
    assert load_settings(overrides={"alert_threshold": 0.6}, env={}).alert_threshold == 0.6  # one level alone
    s = load_settings(env={"SCI_ALERT_THRESHOLD": "0.2", "SCI_ALERT_CRITICAL": "0.4"})
    assert (s.alert_threshold, s.alert_critical) == (0.2, 0.4)
    s = load_settings(env={"SCI_ALERT_THRESHOLD": "", "SCI_ALERT_CRITICAL": " "})  # empty: unset, the cards' levels
    assert (s.alert_threshold, s.alert_critical) == (None, None)
    assert Settings(alert_critical=0.25).masked()["alert_critical"] == 0.25
    assert Settings().masked()["alert_threshold"] is None


def test_bad_env_names_the_variable():
    with pytest.raises(SettingsError, match=r"environment SCI_BATCH_TIMEOUT_S: bad value 'soon'"):
        load_settings(env={"SCI_BATCH_TIMEOUT_S": "soon"})
    assert load_settings(env={"SCI_SOMETHING_ELSE": "x"}) == Settings()  # unknown SCI_* names are ignored


@pytest.mark.parametrize(("text", "message"), [
    ("[influx]\nurll = 'http://x:1'\n", "unknown setting [influx] urll (known: url, port,"),
    ("[worker]\nbatch_size = '64'\n", "[worker] batch_size: bad value '64' for batch_size (expected an int"),
    ("[worker]\nbatch_size = true\n", "expected an integer"),
    ("[grafana]\nport = 3000\n", "unknown setting 'grafana'"),
    ("batch_size = 1\n[worker]\nbatch_size = 2\n", "batch_size is already set by"),
    ("[kafka\n", "invalid TOML"),
])
def test_bad_toml_raises_one_line_errors(tmp_path, text, message):
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text), env={})
    assert message in str(info.value)
    assert str(tmp_path / "sci.toml") in str(info.value)


def test_missing_toml_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_models_setting_overrides_the_registry_defaults_per_lead(tmp_path):
    s = load_settings(env={"SCI_MODELS": "ecg:V1=mitdb-v1, vibration=cwru-loadshift, ecg:MLII="})
    assert s.served_models == {("ecg", "V1"): "mitdb-v1", ("vibration", "DE"): "cwru-loadshift"}
    toml = write(tmp_path, '[sink]\nmax_attempts = 3\nbackoff_s = 0.5\n[worker]\nmodels = "ecg:V1=x"\n')
    s = load_settings(toml, env={})
    assert (s.sink_max_attempts, s.sink_backoff_s, s.models) == (3, 0.5, "ecg:V1=x")


def test_relative_paths_from_the_environment_follow_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={"SCI_STATE_DIR": "st"}).state_dir == tmp_path / "st"
    assert load_settings(env={}).state_dir == tmp_path / ".state"


def test_cache_follows_xdg_unless_sci_cache_dir_is_set(tmp_path, monkeypatch):
    from models.data import paths

    monkeypatch.delenv("SCI_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "sci-monitor"
    monkeypatch.setenv("SCI_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"
