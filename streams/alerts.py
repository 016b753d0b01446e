"""Alert subscriptions: follow the escalation and ΔSP-alert topics, filter, group bursts, deliver.

A subscription is a named Kafka consumer group (``sci-monitor.subscription.<name>``) on ``<prefix>.escalations``
and ``<prefix>.alerts``. Each record becomes an :class:`Event` (kind, de-duplication key, stream, modality,
reason, severity, the message itself); an :class:`EventFilter` keeps the ones asked for (stream glob patterns,
modalities, reasons, minimum severity). A :class:`BurstGrouper` sends at most one notification per stream per
cool-down: the first event of a quiet stream goes out at once, the events that follow within the cool-down are
held and leave as one summary notification when it ends, carrying the number of events it stands for
(``suppressed``) and their keys. Notifications go to destinations: the terminal (a readable line or a JSON
line), a webhook (HTTP POST, retries with exponential backoff, HMAC-SHA256 signature with a secret from the
environment) or a command (the notification JSON on its stdin).

Delivery is at-least-once: a record's offset is committed only after its notification was delivered (or after
it was filtered out), and never past an event still held for a summary. A subscriber that stops resumes where it
stopped; held events are read again after a restart (the cool-down state lives in memory), so a receiver may see
a notification twice after a crash and de-duplicates on ``key``. Severity: alerts carry their own (``warning`` at
ΔSP ≥ ``alert_threshold``, ``critical`` at ≥ ``alert_critical``); an escalation (an abstained window, handed
to a person) is ``warning``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit, urlunsplit

import requests

from streams.contracts import AlertMessage, ContractError, EscalationMessage
from streams.settings import Settings

log = logging.getLogger("sci_monitor.alerts")

KINDS = ("escalation", "alert")
SEVERITIES = ("warning", "critical")  # ordered: a minimum severity keeps itself and what follows
ESCALATION_SEVERITY = "warning"
NOTIFICATION_VERSION = 1
SIGNATURE_HEADER = "X-SCI-Signature"
TIMESTAMP_HEADER = "X-SCI-Timestamp"
KEY_HEADER = "X-SCI-Event-Key"
MAX_KEYS = 1000  # keys listed in one summary notification (the count is always exact)


class DeliveryError(RuntimeError):
    """A notification could not be delivered after the allowed attempts (its offset stays uncommitted)."""


# ------------------------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class Event:
    """One escalation or ΔSP alert read from Kafka.

    ``key`` = ``"<kind>/<stream>:<seq>"``: unique per window and kind (a window can be escalated and alerted),
    the same on every redelivery, so receivers de-duplicate on it.
    """

    kind: str
    key: str
    stream: str
    modality: str
    reason: str
    severity: str
    message: dict[str, Any]
    topic: str = ""
    partition: int = 0
    offset: int = 0


def parse_event(kind: str, value: bytes, topic: str = "", partition: int = 0, offset: int = 0) -> Event:
    """Validate an escalation (``kind="escalation"``) or alert message and wrap it; raises ContractError.

    >>> from streams.contracts import LabelMessage
    >>> m = LabelMessage(stream="p1", modality="ecg", seq=7, t0_ns=0, model="mitdb", label="N",
    ...                  probs={"N": 0.6, "V": 0.4}, sp=0.1, delta_sp=0.6, passes=25, decision="abstained",
    ...                  reason="budget", latency_ms=3.0, worker="w")
    >>> e = parse_event("alert", AlertMessage.from_label(m, "critical", 0.5).to_json())
    >>> (e.key, e.severity, e.reason)
    ('alert/p1:7', 'critical', 'budget')
    """
    cls = {"escalation": EscalationMessage, "alert": AlertMessage}.get(kind)
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r} (known: {', '.join(KINDS)})")
    msg = cls.from_json(value)
    sev = msg.severity if kind == "alert" else ESCALATION_SEVERITY
    return Event(kind, f"{kind}/{msg.stream}:{msg.seq}", msg.stream, msg.modality, msg.reason, sev,
                 json.loads(value), topic, partition, offset)


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscription wants; an empty tuple means any.

    >>> f = EventFilter(streams=("mitdb-1*",), min_severity="critical")
    >>> e = Event("alert", "alert/mitdb-100:1", "mitdb-100", "ecg", "budget", "critical", {})
    >>> f.matches(e), f.matches(Event("alert", "k", "mitdb-200", "ecg", "budget", "critical", {}))
    (True, False)
    >>> f.matches(Event("escalation", "k", "mitdb-100", "ecg", "budget", "warning", {}))
    False
    """

    streams: tuple[str, ...] = ()  # shell-style glob patterns (fnmatch, case-sensitive)
    modalities: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS
    min_severity: str = SEVERITIES[0]

    def __post_init__(self) -> None:
        if self.min_severity not in SEVERITIES:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITIES)}, got {self.min_severity!r}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)} (known: {', '.join(KINDS)})")

    def matches(self, e: Event) -> bool:
        return (e.kind in self.kinds
                and SEVERITIES.index(e.severity) >= SEVERITIES.index(self.min_severity)
                and (not self.modalities or e.modality in self.modalities)
                and (not self.reasons or e.reason in self.reasons)
                and (not self.streams or any(fnmatch.fnmatchcase(e.stream, p) for p in self.streams)))


# ------------------------------------------------------------------------------------------ notifications
@dataclass(frozen=True)
class Notification:
    """What a destination receives: one event standing for itself and ``suppressed`` more of its stream.

    ``keys`` lists the keys of every event it stands for (the event's first; at most :data:`MAX_KEYS`).
    """

    event: Event
    suppressed: int = 0
    keys: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.event.key

    def to_dict(self) -> dict[str, Any]:
        e = self.event
        return {"v": NOTIFICATION_VERSION, "key": e.key, "kind": e.kind, "stream": e.stream,
                "modality": e.modality, "severity": e.severity, "reason": e.reason,
                "suppressed": self.suppressed, "keys": list(self.keys or (e.key,)), "event": e.message}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    def line(self) -> str:
        """One readable line, e.g. ``2026-11-22T05:40:01Z CRITICAL alert mitdb-100 #17 ecg: ΔSP 0.62 ≥ 0.50 ...``."""
        e, m = self.event, self.event.message
        when = datetime.fromtimestamp(m.get("t0_ns", 0) / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = (f"ΔSP {m.get('delta_sp', 0):.2f} ≥ {m.get('threshold', 0):.2f}" if e.kind == "alert"
                else f"abstained ({e.reason})")
        truth = f" (truth {m['truth']})" if m.get("truth") is not None else ""
        more = f"  [+{self.suppressed} more in the cool-down]" if self.suppressed else ""
        return (f"{when} {e.severity.upper():8s} {e.kind:10s} {e.stream} #{m.get('seq')} {e.modality}: {what}, "
                f"label {m.get('label')}{truth}, SP {m.get('sp', 0):.2f}, {m.get('passes')} passes, "
                f"reason {e.reason}{more}")


@dataclass
class _Burst:
    until: float  # end of the current cool-down (clock seconds)
    held: list[Event] = field(default_factory=list)


class BurstGrouper:
    """At most one notification per stream per ``cooldown_s`` (0: every event at once).

    >>> t = [0.0]
    >>> g = BurstGrouper(10.0, clock=lambda: t[0])
    >>> ev = [Event("alert", f"alert/s:{i}", "s", "ecg", "r", "warning", {}) for i in range(4)]
    >>> [g.offer(e) is not None for e in ev]  # the first goes out, the rest are held
    [True, False, False, False]
    >>> g.due(), (t.__setitem__(0, 10.0), [(n.key, n.suppressed, len(n.keys)) for n in g.due()])[1]
    ([], [('alert/s:3', 2, 3)])
    """

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.cooldown_s, self.clock = cooldown_s, clock
        self._bursts: dict[str, _Burst] = {}

    def offer(self, e: Event) -> Notification | None:
        """The notification to send now, or None when ``e`` is held for the stream's summary."""
        now = self.clock()
        burst = self._bursts.get(e.stream)
        if burst is not None and (now < burst.until or burst.held):
            burst.held.append(e)
            return None
        if self.cooldown_s > 0:
            self._bursts[e.stream] = _Burst(now + self.cooldown_s)
        return Notification(e, 0, (e.key,))

    def due(self) -> list[Notification]:
        """Summaries of the streams whose cool-down has ended (each opens the next cool-down)."""
        now = self.clock()
        out = []
        for stream, burst in list(self._bursts.items()):
            if now < burst.until:
                continue
            if not burst.held:
                del self._bursts[stream]
                continue
            latest = burst.held[-1]  # the stream's most recent state is what a person acts on
            keys = (latest.key, *(e.key for e in burst.held[:-1]))[:MAX_KEYS]
            out.append(Notification(latest, len(burst.held) - 1, keys))
            self._bursts[stream] = _Burst(now + self.cooldown_s)
        return out

    def held_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> lowest offset of an event still held: commits must stay below it."""
        low: dict[tuple[str, int], int] = {}
        for burst in self._bursts.values():
            for e in burst.held:
                tp = (e.topic, e.partition)
                low[tp] = min(low.get(tp, e.offset), e.offset)
        return low


# ------------------------------------------------------------------------------------------ destinations
class Destination(Protocol):
    """Delivers one notification or raises :class:`DeliveryError`."""

    def deliver(self, n: Notification) -> None: ...

    def close(self) -> None: ...


class TerminalDestination:
    """Readable lines (or JSON lines with ``as_json``) on ``out``, flushed per notification."""

    def __init__(self, out: TextIO | None = None, as_json: bool = False) -> None:
        self.out, self.as_json = out or sys.stdout, as_json

    def deliver(self, n: Notification) -> None:
        self.out.write((n.to_json().decode() if self.as_json else n.line()) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` HMAC of ``timestamp + "." + body``: what the webhook sends in ``X-SCI-Signature``.

    >>> sign(b"k", "1700000000", b"{}")
    'sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146'
    """
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` (header ``X-SCI-Signature``) is the HMAC of this timestamp and body.

    >>> sig = sign(b"k", "1", b"x")
    >>> verify_signature(b"k", "1", b"x", sig), verify_signature(b"k", "1", b"y", sig)
    (True, False)
    """
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment, for logs (tokens often hide there).

    >>> safe_url("https://user:pw@hooks.example.com:8443/x/y?token=abc")
    'https://hooks.example.com:8443/x/y'
    """
    p = urlsplit(url)
    host = (p.hostname or "") + (f":{p.port}" if p.port else "")
    return urlunsplit((p.scheme, host, p.path, "", ""))


def _retrying(attempt_once: Callable[[], None], what: str, max_attempts: int, backoff_s: float,
              sleep: Callable[[float], None]) -> None:
    """Call ``attempt_once`` until it returns; ``_Permanent`` stops at once, other errors retry with a doubling
    delay (capped at 30 s) up to ``max_attempts`` tries, each failure logged."""
    for attempt in range(1, max_attempts + 1):
        try:
            attempt_once()
            return
        except _Permanent as exc:
            raise DeliveryError(f"{what}: {exc} (not retried)") from None
        except Exception as exc:  # network, HTTP 5xx/429, command failures: all worth another try
            if attempt == max_attempts:
                raise DeliveryError(f"{what}: failed after {attempt} attempt(s): {exc}") from None
            delay = min(30.0, backoff_s * 2 ** (attempt - 1))
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt, exc, delay)
            sleep(delay)


class _Permanent(Exception):
    """A failure that retrying cannot fix (e.g. HTTP 400)."""


class WebhookDestination:
    """HTTP POST of the notification JSON; 2xx is delivered, 408/429/5xx and connection errors are retried.

    Headers: ``Content-Type: application/json``, ``X-SCI-Event-Key`` (de-duplication key), and when a secret is
    given ``X-SCI-Timestamp`` (Unix seconds) + ``X-SCI-Signature`` (:func:`sign`). The secret is never logged;
    logs show the URL without user info or query.
    """

    def __init__(self, url: str, secret: bytes | None = None, *, max_attempts: int = 5, backoff_s: float = 0.5,
                 timeout_s: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL must be http:// or https://, got {safe_url(url)!r}")
        self.url, self._secret = url, secret
        self.max_attempts, self.backoff_s, self.timeout_s, self._sleep = max_attempts, backoff_s, timeout_s, sleep
        self._session = requests.Session()

    def deliver(self, n: Notification) -> None:
        body = n.to_json()

        def post() -> None:
            headers = {"Content-Type": "application/json", KEY_HEADER: n.key}
            if self._secret:
                ts = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = ts
                headers[SIGNATURE_HEADER] = sign(self._secret, ts, body)
            try:
                r = self._session.post(self.url, data=body, headers=headers, timeout=self.timeout_s)
            except requests.RequestException as exc:
                raise ConnectionError(type(exc).__name__) from None  # the message may echo the URL
            if r.status_code >= 300:
                problem = f"HTTP {r.status_code}"
                if r.status_code in (408, 429) or r.status_code >= 500:
                    raise RuntimeError(problem)
                raise _Permanent(problem)

        _retrying(post, f"webhook {safe_url(self.url)} ({n.key})", self.max_attempts, self.backoff_s, self._sleep)

    def close(self) -> None:
        self._session.close()


class CommandDestination:
    """Runs ``argv`` once per notification with its JSON on stdin and ``SCI_EVENT_KEY`` in the environment;
    a non-zero exit or a timeout is retried like a webhook."""

    def __init__(self, argv: Sequence[str], *, max_attempts: int = 5, backoff_s: float = 0.5,
                 timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if not argv:
            raise ValueError("empty command")
        self.argv = list(argv)
        self.max_attempts, self.backoff_s, self.timeout_s, self._sleep = max_attempts, backoff_s, timeout_s, sleep

    def deliver(self, n: Notification) -> None:
        def run() -> None:
            proc = subprocess.run(self.argv, input=n.to_json(), capture_output=True, timeout=self.timeout_s,
                                  env={**os.environ, "SCI_EVENT_KEY": n.key})
            if proc.returncode != 0:
                raise RuntimeError(f"exit code {proc.returncode}: {proc.stderr.decode(errors='replace')[-200:]}")

        _retrying(run, f"command {self.argv[0]} ({n.key})", self.max_attempts, self.backoff_s, self._sleep)

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------------------------- subscriber
def group_id(name: str) -> str:
    """The consumer group of subscription ``name``."""
    return f"sci-monitor.subscription.{name}"


@dataclass
class SubscriptionStats:
    read: int = 0
    matched: int = 0
    delivered: int = 0  # notifications
    invalid: int = 0


class Subscriber:
    """Follows the escalation and alert topics as consumer group :func:`group_id` ``(name)`` until ``stop``.

    ``from_beginning``: where a new subscription (no committed offsets) starts; an existing one always resumes
    at its committed offsets.
    """

    def __init__(self, settings: Settings, name: str, event_filter: EventFilter,
                 destinations: Sequence[Destination], *, cooldown_s: float = 60.0, from_beginning: bool = False,
                 poll_ms: int = 200) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"subscription name must be non-empty without spaces, got {name!r}")
        if not destinations:
            raise ValueError("a subscription needs at least one destination")
        self.settings, self.name, self.filter = settings, name, event_filter
        self.destinations = list(destinations)
        self.grouper = BurstGrouper(cooldown_s)
        self.from_beginning, self.poll_ms = from_beginning, poll_ms
        self.kind_of = {settings.topics["escalations"]: "escalation", settings.topics["alerts"]: "alert"}
        self.stats = SubscriptionStats()
        self.stop = threading.Event()

    def _consumer(self):
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap, group_id=group_id(self.name),
                client_id=f"sci-monitor-subscribe-{self.name}", enable_auto_commit=False,
                auto_offset_reset="earliest" if self.from_beginning else "latest",
                session_timeout_ms=10000, heartbeat_interval_ms=2000)
        except KafkaError as exc:
            raise RuntimeError(f"no Kafka broker answers at {self.settings.kafka_bootstrap} ({exc}); start one "
                               "with `sci-monitor stack up` or set SCI_KAFKA_BOOTSTRAP") from exc
        consumer.subscribe(sorted(self.kind_of))
        return consumer

    def run(self) -> SubscriptionStats:
        """Consume, filter, group and deliver until :attr:`stop` is set; commits what is safe on the way out.

        Raises :class:`DeliveryError` when a destination gives up (offsets of undelivered events stay
        uncommitted, so a restart delivers them)."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        consumer = self._consumer()
        next_offset: dict[tuple[str, int], int] = {}
        committed: dict[tuple[str, int], int] = {}

        def commit() -> None:
            held = self.grouper.held_offsets()
            todo = {}
            for tp, nxt in next_offset.items():
                safe = min(nxt, held.get(tp, nxt))
                if committed.get(tp) != safe:
                    todo[TopicPartition(*tp)] = OffsetAndMetadata(safe, "", -1)
            if todo:
                consumer.commit(todo)
                committed.update({(tp.topic, tp.partition): om.offset for tp, om in todo.items()})

        log.info("subscription %s (group %s) on %s, cool-down %.0f s", self.name, group_id(self.name),
                 ", ".join(sorted(self.kind_of)), self.grouper.cooldown_s)
        failed = False
        try:
            while not self.stop.is_set():
                batches = consumer.poll(timeout_ms=self.poll_ms, max_records=500)
                for tp, records in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
                    for rec in records:
                        self._handle(rec)
                        next_offset[(tp.topic, tp.partition)] = rec.offset + 1
                        if self.stop.is_set():
                            break
                    if self.stop.is_set():
                        break
                for n in self.grouper.due():
                    self._deliver(n)
                commit()
        except DeliveryError:
            failed = True  # a summary being delivered is no longer held: commit nothing more
            raise
        finally:
            if not failed:
                with contextlib.suppress(Exception):
                    commit()
            consumer.close()  # leaves the group, so a restart rejoins at once
            for d in self.destinations:
                d.close()
        return self.stats

    def _handle(self, rec: Any) -> None:
        self.stats.read += 1
        try:
            event = parse_event(self.kind_of[rec.topic], rec.value, rec.topic, rec.partition, rec.offset)
        except (ContractError, ValueError) as exc:
            self.stats.invalid += 1
            log.warning("skipping invalid record %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, exc)
            return
        if not self.filter.matches(event):
            return
        self.stats.matched += 1
        n = self.grouper.offer(event)
        if n is not None:
            self._deliver(n)

    def _deliver(self, n: Notification) -> None:
        for d in self.destinations:
            d.deliver(n)
        self.stats.delivered += 1


def run_subscription(subscriber: Subscriber, handle_signals: bool = True) -> SubscriptionStats:
    """Run until SIGINT/SIGTERM (when ``handle_signals``) or ``subscriber.stop`` is set."""
    import signal

    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: subscriber.stop.set())
    return subscriber.run()


def secret_from_env(var: str | None, env: Mapping[str, str] | None = None) -> bytes | None:
    """The webhook signing secret from environment variable ``var`` (None: unsigned); empty is an error."""
    if var is None:
        return None
    value = (os.environ if env is None else env).get(var)
    if not value:
        raise ValueError(f"environment variable {var} (webhook signing secret) is not set or empty")
    return value.encode()
