"""Runtime settings for sci-monitor: one frozen dataclass and a layered loader.

Precedence (highest first): ``overrides`` (CLI flags) > environment (``SCI_<FIELD NAME>``) > TOML file >
defaults.

Environment: every field ``name`` is read from ``SCI_`` + ``name.upper()``, e.g. ``SCI_KAFKA_BOOTSTRAP``,
``SCI_INFLUX_URL``, ``SCI_BATCH_SIZE``, ``SCI_BATCH_TIMEOUT_S``, ``SCI_ALERT_THRESHOLD``, ``SCI_STATE_DIR``,
``SCI_KAFKA_PORT``. Unknown ``SCI_*`` variables are ignored (other tools may share the prefix).

TOML file (``tomllib``): flat top-level keys named like the fields, and/or four sections with short keys::

    batch_size = 32       # flat form: a field name at top level (must come before the first section)

    [kafka]               # bootstrap, port, topic_prefix, input_partitions, output_partitions, security_protocol,
    bootstrap = "broker:9092" # sasl_mechanism, sasl_username, sasl_password, ssl_cafile, ssl_certfile, ssl_keyfile
    [influx]              # url, port, rpc_port, version, db, rp, user, password, org, bucket, token,
    version = "auto"      #   batch_lines, timeout_s  (field influx_<key>)
    [sink]                # max_attempts, backoff_s, max_backoff_s (field sink_<key>): the storage retry policy
    max_attempts = 0      #   0 = hold the batch (and its offsets) until it is written
    [worker]              # app_id, batch_size, batch_timeout_s, alert_threshold, alert_critical, device,
    batch_timeout_s = 0.1 #   models, data_dir, health_port, startup_wait_s
    [stack]               # state_dir, timeout_s (field stack_timeout_s)
    state_dir = ".state"  # relative paths in the file are relative to the file's directory
    [monitor]             # trust_window, trust_interval_s, ece_bins, drift_delta, escalation_rate_max,
    silence_s = 120       #   alert_rate_max, latency_p95_max_ms, silence_s, rule_window_s

Unknown sections/keys and bad values raise :class:`SettingsError` with a one-line message naming the source.

Every field declares its rules next to it (:func:`_opt`: choices, minimum, a pattern, a check, a derived
default); there are no per-field special cases in the loader. Derived defaults: an empty ``kafka_bootstrap``
becomes ``127.0.0.1:<kafka_port>``, an empty ``influx_url`` becomes ``http://127.0.0.1:<influx_port>`` and an
empty ``influx_bucket`` becomes ``influx_db``, so setting only ``SCI_KAFKA_PORT`` moves both the local stack and
its clients. Relative paths from the environment or flags are relative to the working directory; the local
stack's state defaults to ``./.state`` (never inside the installed package).

ΔSP alert levels come from each checkpoint's card (derived on its validation split, ``controller.alerts``);
``alert_threshold`` / ``alert_critical`` are optional overrides (unset = the cards' levels; set, each replaces its
level for every model). Optional numbers are unset with an empty value (``SCI_ALERT_THRESHOLD=``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "SCI_"
SECTIONS = ("kafka", "influx", "sink", "worker", "stack", "monitor")
TOPIC_ROLES = ("windows", "labels", "escalations", "alerts", "deadletter", "drift")


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message names the setting and where it came from."""


def _check_models(text: str) -> str | None:
    from streams.modalities import parse_models

    try:
        parse_models(text)
    except ValueError as exc:
        return str(exc)
    return None


def _opt(default: Any, section: str, key: str, doc: str, *, secret: bool = False, choices: tuple[str, ...] = (),
         minimum: float | None = None, pattern: str | None = None, expected: str = "",
         check: Callable[[Any], str | None] | None = None, derive: Callable[[Settings], Any] | None = None,
         url: bool = False, port: bool = False) -> Any:
    """Declare one setting: TOML ``[section] key``, env ``SCI_<NAME>``, and its rules: ``choices``, ``minimum``,
    ``port`` (1..65535), ``url`` (http/https), a full-match regex ``pattern`` (``expected`` says it in words),
    ``check(value) -> problem or None``, ``derive(settings)`` for an empty value. A Path default is taken
    relative to the working directory when settings are built."""
    if port:
        minimum, check = 1, (lambda v: None if v <= 65535 else "expected a TCP port 1..65535")
    if url:
        pattern, expected = r"(https?://\S+)?", "expected an http:// or https:// URL"
    meta = {"section": section, "key": key, "doc": doc, "secret": secret, "choices": choices, "minimum": minimum,
            "pattern": re.compile(pattern) if pattern else None, "expected": expected, "check": check,
            "derive": derive, "url": url}
    if isinstance(default, Path):
        return field(default_factory=lambda: Path.cwd() / default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Every runtime knob of sci-monitor; defaults talk to the local stack (``sci-monitor stack up``)."""

    # [kafka]
    kafka_bootstrap: str = _opt("", "kafka", "bootstrap", "bootstrap servers host:port[,host:port]",
                                pattern=r"([^\s:,]+:\d{1,5})(\s*,\s*[^\s:,]+:\d{1,5})*",
                                expected="expected host:port[,host:port]",
                                derive=lambda s: f"127.0.0.1:{s.kafka_port}")
    kafka_port: int = _opt(19092, "kafka", "port", "local broker listener port", port=True)
    topic_prefix: str = _opt("sci", "kafka", "topic_prefix", "topics are <prefix>.windows, .labels, ...",
                             pattern=r"[A-Za-z0-9._-]{1,200}", expected="expected letters, digits, '.', '_' or '-'")
    input_partitions: int = _opt(4, "kafka", "input_partitions", "partitions of <prefix>.windows", minimum=1)
    output_partitions: int = _opt(1, "kafka", "output_partitions", "partitions of each output topic",
                                  minimum=1)
    # [kafka] client security, passed to the worker, the replayer and subscribers (streams/security.py; issue 8)
    kafka_security_protocol: str = _opt("PLAINTEXT", "kafka", "security_protocol", "PLAINTEXT, SSL, SASL_PLAINTEXT "
                                        "or SASL_SSL", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    kafka_sasl_mechanism: str = _opt("PLAIN", "kafka", "sasl_mechanism", "SASL mechanism",
                                     choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    kafka_sasl_username: str = _opt("", "kafka", "sasl_username", "SASL user")
    kafka_sasl_password: str = _opt("", "kafka", "sasl_password", "SASL password", secret=True)
    kafka_ssl_cafile: str = _opt("", "kafka", "ssl_cafile", "CA bundle (PEM) to verify the brokers; empty: system")
    kafka_ssl_certfile: str = _opt("", "kafka", "ssl_certfile", "client certificate (PEM) for mutual TLS")
    kafka_ssl_keyfile: str = _opt("", "kafka", "ssl_keyfile", "client key (PEM) for mutual TLS")
    # [influx]
    influx_url: str = _opt("", "influx", "url", "InfluxDB base URL", url=True,
                           derive=lambda s: f"http://127.0.0.1:{s.influx_port}")
    influx_port: int = _opt(18086, "influx", "port", "local influxd HTTP port", port=True)
    influx_rpc_port: int = _opt(18088, "influx", "rpc_port", "local influxd RPC (backup) port", port=True)
    influx_version: str = _opt("auto", "influx", "version", "API: auto (from /ping), 1 or 2",
                               choices=("auto", "1", "2"))
    influx_db: str = _opt("sci", "influx", "db", "1.x database")
    influx_rp: str = _opt("autogen", "influx", "rp", "1.x retention policy")
    influx_user: str = _opt("", "influx", "user", "1.x user (basic auth)")
    influx_password: str = _opt("", "influx", "password", "1.x password", secret=True)
    influx_org: str = _opt("", "influx", "org", "2.x organisation")
    influx_bucket: str = _opt("", "influx", "bucket", "2.x bucket (default: influx_db)",
                              derive=lambda s: s.influx_db)
    influx_token: str = _opt("", "influx", "token", "2.x API token", secret=True)
    influx_batch_lines: int = _opt(5000, "influx", "batch_lines", "lines per HTTP write", minimum=1)
    influx_timeout_s: float = _opt(10.0, "influx", "timeout_s", "HTTP timeout per request (s)", minimum=0.001)
    # [sink]
    sink_max_attempts: int = _opt(0, "sink", "max_attempts",
                                  "tries per batch; 0 = hold the batch until it is written", minimum=0)
    sink_backoff_s: float = _opt(0.2, "sink", "backoff_s", "first retry delay, doubles per try (s)", minimum=0)
    sink_max_backoff_s: float = _opt(10.0, "sink", "max_backoff_s", "longest retry delay (s)", minimum=0)
    # [worker]
    app_id: str = _opt("sci-monitor", "worker", "app_id", "Faust app id (= consumer group)")
    batch_size: int = _opt(64, "worker", "batch_size", "windows per classifier batch", minimum=1)
    batch_timeout_s: float = _opt(0.05, "worker", "batch_timeout_s", "max wait to fill a batch (s)",
                                  minimum=0)
    fetch_wait_s: float = _opt(0.05, "worker", "fetch_wait_s", "max wait of a Kafka fetch for new windows (s; "
                               "Faust's 1.5 s adds up to that to the latency on brokers that hold fetches)",
                               minimum=0.001)
    alert_threshold: float | None = _opt(None, "worker", "alert_threshold", "ΔSP warning level for every model "
                                         "(unset: each card's, derived on validation)", minimum=0)
    alert_critical: float | None = _opt(None, "worker", "alert_critical", "ΔSP critical level for every model "
                                        "(unset: each card's, derived on validation)", minimum=0)
    device: str = _opt("auto", "worker", "device", "torch device", choices=("auto", "cpu", "cuda"))
    models: str = _opt("", "worker", "models", "modality[:lead]=checkpoint, ... over the registry's defaults",
                       check=_check_models)
    data_dir: Path | None = _opt(None, "worker", "data_dir",  # noqa: RUF009 (_opt returns a field)
                                 "recordings (None: models.data.paths default)")
    # [worker] health and start-up (streams/health.py; issue 8)
    health_port: int = _opt(9108, "worker", "health_port", "HTTP port of /healthz, /readyz, /metrics (0: off)",
                            minimum=0, check=lambda v: None if v <= 65535 else "expected a TCP port 0..65535")
    startup_wait_s: float = _opt(60.0, "worker", "startup_wait_s", "how long the worker waits for the broker and "
                                 "InfluxDB at start before it exits non-zero (s)", minimum=0)
    # [stack]
    state_dir: Path = _opt(Path(".state"), "stack", "state_dir",  # noqa: RUF009 (_opt returns a field)
                           "pid/log/data files of the local stack")
    stack_timeout_s: float = _opt(30.0, "stack", "timeout_s", "max wait for the local stack to start (s)",
                                  minimum=0.1)

    # [monitor] online trust metrics (streams.trust) and the Grafana alert rules (streams.grafana)
    trust_window: int = _opt(500, "monitor", "trust_window", "windows per rolling trust-metric window", minimum=10)
    trust_interval_s: float = _opt(10.0, "monitor", "trust_interval_s", "seconds between trust-metric points",
                                   minimum=0.1)
    ece_bins: int = _opt(10, "monitor", "ece_bins", "equal-width confidence bins of the online ECE", minimum=2)
    drift_delta: float = _opt(0.002, "monitor", "drift_delta", "ADWIN confidence δ of the drift detectors",
                              minimum=1e-9)
    escalation_rate_max: float = _opt(0.5, "monitor", "escalation_rate_max",
                                      "alert rule: escalated share of a stream's windows (starting point)", minimum=0)
    alert_rate_max: float = _opt(0.5, "monitor", "alert_rate_max",
                                 "alert rule: ΔSP-alert share of a stream's windows (starting point)", minimum=0)
    latency_p95_max_ms: float = _opt(2000.0, "monitor", "latency_p95_max_ms", "alert rule: latency p95 (ms)",
                                     minimum=0)
    silence_s: float = _opt(120.0, "monitor", "silence_s", "alert rule: no window stored for this long (s)",
                            minimum=1)
    rule_window_s: float = _opt(300.0, "monitor", "rule_window_s", "alert rules: evaluation window (s)", minimum=10)

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)
        for f in fields:
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name), f"Settings({f.name}=...)"))
        for f in fields:
            if f.metadata["derive"] is not None and not getattr(self, f.name):
                object.__setattr__(self, f.name, f.metadata["derive"](self))
        if None not in (self.alert_threshold, self.alert_critical) and self.alert_threshold > self.alert_critical:
            raise SettingsError(f"alert_threshold ({self.alert_threshold}) must not exceed alert_critical "
                                f"({self.alert_critical})")
        if self.influx_port == self.influx_rpc_port:
            raise SettingsError(f"influx_port and influx_rpc_port must differ (both {self.influx_port})")

    @property
    def topics(self) -> dict[str, str]:
        """Role -> topic name, e.g. ``{"windows": "sci.windows", ...}``."""
        return {role: f"{self.topic_prefix}.{role}" for role in TOPIC_ROLES}

    @property
    def topic_partitions(self) -> dict[str, int]:
        """Topic name -> partitions: ``input_partitions`` for the input topic, ``output_partitions`` else."""
        return {name: self.input_partitions if role == "windows" else self.output_partitions
                for role, name in self.topics.items()}

    @property
    def served_models(self) -> dict[tuple[str, str], str]:
        """(modality, lead) -> checkpoint the worker serves: the registry's defaults with ``models`` applied."""
        from streams.modalities import parse_models

        return parse_models(self.models)

    def masked(self) -> dict[str, Any]:
        """Field name -> value for display; secrets (and URL passwords) set are shown as '***'."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                value = "***" if value else ""
            elif f.metadata["url"]:
                value = _mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Settings)}


_PARSE = {"int": int, "float": float}


def _coerce(f: dataclasses.Field, value: Any, source: str, base_dir: Path | None = None,
            from_text: bool = False) -> Any:
    """Convert ``value`` to the field's type and apply the field's rules; strings are parsed as numbers only
    when ``from_text`` (env vars, CLI flags): TOML and Python values must already have the right type."""
    meta = f.metadata
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))

    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{source}: bad value {value!r} for {f.name} ({expected})")

    if typ.endswith(" | None"):  # an optional setting: None or an empty value leaves it unset
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        typ = typ.removesuffix(" | None")
    if "Path" in typ:
        if value is None or value == "":
            raise bad("expected a path")
        if not isinstance(value, str | os.PathLike):
            raise bad("expected a path")
        path = Path(value).expanduser()
        return ((base_dir or Path.cwd()) / path).resolve()
    if typ in _PARSE:
        expected = "expected an integer" if typ == "int" else "expected a number"
        if from_text and isinstance(value, str):
            try:
                value = _PARSE[typ](value.strip())
            except ValueError:
                raise bad(expected) from None
        if isinstance(value, bool) or not isinstance(value, int | (float if typ == "float" else int)):
            raise bad(expected)
        value = _PARSE[typ](value)
        if not math.isfinite(value):
            raise bad("expected a finite number")
    else:  # str
        if meta["choices"] and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise bad("expected a string")
        value = value.strip()
        if meta["choices"] and value not in meta["choices"]:
            raise bad("expected one of " + ", ".join(meta["choices"]))
        if meta["pattern"] is not None and value and not meta["pattern"].fullmatch(value):
            raise bad(meta["expected"])
        if meta["url"]:
            value = value.rstrip("/")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise bad(f"must be >= {meta['minimum']}")
    problem = meta["check"](value) if meta["check"] is not None else None
    if problem:
        raise bad(problem)
    return value


def _read_toml(path: Path) -> dict[str, tuple[Any, str]]:
    """TOML file -> {field name: (value, source)}; relative paths resolved against the file's directory."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    fields = _fields()
    by_section = {(f.metadata["section"], f.metadata["key"]): name for name, f in fields.items()}
    found: dict[str, tuple[Any, str]] = {}

    def put(name: str, value: Any, source: str) -> None:
        if name in found:
            raise SettingsError(f"{source}: {name} is already set by {found[name][1]}")
        found[name] = (value, source)

    for top_key, top_value in doc.items():
        if top_key in SECTIONS and isinstance(top_value, dict):
            for key, value in top_value.items():
                name = by_section.get((top_key, key))
                if name is None:
                    known = ", ".join(k for s, k in by_section if s == top_key)
                    raise SettingsError(f"{path}: unknown setting [{top_key}] {key} (known: {known})")
                put(name, value, f"{path} [{top_key}] {key}")
        elif top_key in fields:
            put(top_key, top_value, f"{path} {top_key}")
        else:
            raise SettingsError(f"{path}: unknown setting {top_key!r} (sections: {', '.join(SECTIONS)}; "
                                "or flat field names)")
    return found


def load_settings(toml_path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] = os.environ) -> Settings:
    """Build :class:`Settings` from defaults < TOML file < ``SCI_*`` env < ``overrides`` (None skipped).

    ``overrides`` keys are field names (``{"batch_size": 32}``); values may be strings (as from CLI flags) or
    typed values. Raises :class:`SettingsError` on unknown keys or bad values.
    """
    fields = _fields()
    values: dict[str, Any] = {}
    base_dir: Path | None = None
    if toml_path is not None:
        toml_path = Path(toml_path)
        base_dir = toml_path.resolve().parent
        for name, (value, source) in _read_toml(toml_path).items():
            values[name] = _coerce(fields[name], value, source, base_dir)
    for name, f in fields.items():
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = _coerce(f, env[var], f"environment {var}", from_text=True)
    for name, value in (overrides or {}).items():
        if name not in fields:
            raise SettingsError(f"unknown setting {name!r} (known: {', '.join(fields)})")
        if value is not None:
            values[name] = _coerce(fields[name], value, f"option {name}", from_text=True)
    return Settings(**values)
