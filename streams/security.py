"""Client security: Kafka SASL/SSL options from the settings, secrets kept out of logs, placeholders refused.

- :func:`kafka_client_config`: keyword arguments for kafka-python clients (the replayer's producer, subscribers,
  admin clients); :func:`faust_credentials`: the same for the Faust worker (aiokafka underneath).
- :func:`redact`: removes the password of every URL (``scheme://user:***@host``) and every known secret value
  from a text; :func:`install_log_redaction` applies it to every log record of the process (message, arguments
  and traceback), whichever logger or handler writes it.
- :func:`check_secrets`: refuses the ``change-me`` placeholders of ``.env.example`` at start-up.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings

PLACEHOLDER = "change-me"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_MASK = "***"


def secret_values(s: Settings) -> list[str]:
    """The secret settings that are set (passwords, tokens), longest first."""
    values = {s.influx_password, s.influx_token, s.kafka_sasl_password}
    return sorted((v for v in values if v), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords and the given secret values replaced by ``***``.

    >>> redact("POST http://sci:hunter2@influx:8086/write failed")
    'POST http://sci:***@influx:8086/write failed'
    >>> redact("token=abc123 sent", ["abc123"])
    'token=*** sent'
    """
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + _MASK + "@", text)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a secret may contain another
        if secret:
            text = text.replace(secret, _MASK)
    return text


def check_secrets(s: Settings) -> None:
    """Raise ``SettingsError`` when a secret or the InfluxDB URL still holds the ``change-me`` placeholder."""
    from streams.settings import SettingsError

    named = {"influx_password": s.influx_password, "influx_token": s.influx_token,
             "kafka_sasl_password": s.kafka_sasl_password, "influx_url": s.influx_url}
    bad = [name for name, value in named.items() if PLACEHOLDER in value.lower()]
    if bad:
        raise SettingsError(f"{', '.join(bad)} still hold the placeholder {PLACEHOLDER!r} from .env.example: "
                            "set real values (e.g. `openssl rand -hex 32`)")
    if s.kafka_security_protocol.startswith("SASL") and not (s.kafka_sasl_username and s.kafka_sasl_password):
        raise SettingsError(f"kafka_security_protocol {s.kafka_security_protocol} needs kafka_sasl_username "
                            "and kafka_sasl_password")


def kafka_client_config(s: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for the security settings (empty for PLAINTEXT)."""
    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return {}
    cfg: dict[str, Any] = {"security_protocol": proto}
    if proto.startswith("SASL"):
        cfg.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                   sasl_plain_password=s.kafka_sasl_password)
    if proto.endswith("SSL"):
        cfg.update({k: v for k, v in (("ssl_cafile", s.kafka_ssl_cafile), ("ssl_certfile", s.kafka_ssl_certfile),
                                      ("ssl_keyfile", s.kafka_ssl_keyfile)) if v})
    return cfg


def _ssl_context(s: Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=s.kafka_ssl_cafile or None)
    if s.kafka_ssl_certfile:
        ctx.load_cert_chain(s.kafka_ssl_certfile, s.kafka_ssl_keyfile or None)
    return ctx


def faust_credentials(s: Settings) -> Any:
    """``broker_credentials`` of the Faust app (None for PLAINTEXT)."""
    import faust

    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    if proto == "SSL":
        return faust.SSLCredentials(_ssl_context(s))
    return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                 ssl_context=_ssl_context(s) if proto == "SASL_SSL" else None,
                                 mechanism=s.kafka_sasl_mechanism)


def _redact_arg(arg: Any, secrets: Iterable[str]) -> Any:
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    text = str(arg)
    clean = redact(text, secrets)
    return arg if clean == text else clean


def install_log_redaction(secrets: Iterable[str] = ()) -> None:
    """Redact every log record made from now on in this process (idempotent; secrets accumulate).

    A log record factory, not a handler filter, so that records of every logger reach every handler (Faust
    and mode install their own) already redacted: the message and each argument are redacted (an argument that
    is not a number is replaced by its redacted text only when that differs), and a traceback is rendered and
    redacted into ``exc_text`` (which formatters use instead of re-rendering).
    """
    current = logging.getLogRecordFactory()
    known = getattr(current, "sci_secrets", None)
    if known is not None:
        known.update(s for s in secrets if s)
        return
    base = current
    found: set[str] = {s for s in secrets if s}
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            if isinstance(record.msg, str):
                record.msg = redact(record.msg, found)
            if isinstance(record.args, tuple):
                record.args = tuple(_redact_arg(a, found) for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: _redact_arg(v, found) for k, v in record.args.items()}
            if record.exc_info and record.exc_info[0] is not None:
                record.exc_text = redact(formatter.formatException(record.exc_info), found)
        except Exception:  # redaction must never cost a log line
            pass
        return record

    factory.sci_secrets = found  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
