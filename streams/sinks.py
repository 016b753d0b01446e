"""Where per-window decisions are stored: the record, the sink interface, its errors and the one retry policy.

- :class:`WindowDecision`: one window's outcome (the window, the model's :class:`~streams.runtime.WindowResult`,
  latency, worker, the ΔSP alert levels in force). Every output is derived from it (the label, escalation and
  alert messages, storage rows), so a new field (a novelty score, a reason) is added to the window or the result
  once and read from here; :func:`severity` is the one ΔSP alert rule.
- :class:`WindowSink`: what the worker needs from storage: ``write`` a batch of decisions (one attempt, blocking;
  the worker calls it on its storage thread), ``health`` and ``counters`` to show, ``close``. InfluxDB 1.x/2.x
  implement it in :mod:`streams.influx`; any object with these methods plugs in (``sink_factory`` of
  :func:`streams.app.create_app`).
- Errors say what to do next: :class:`SinkUnavailable` (connection, timeout, HTTP 429/5xx: try again later) and
  :class:`SinkRejected` (HTTP 4xx, a bad point: retrying cannot help; dead-letter the windows).
- :class:`RetryPolicy`: the only retry loop around storage, bounded or explicitly "until written", logging every
  failed attempt and counting retries, interruptible by the worker's shutdown.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from streams.contracts import LabelMessage, SensorWindow
    from streams.runtime import WindowResult

__all__ = ["ALERT_CODES", "RetryPolicy", "SinkClosed", "SinkError", "SinkRejected", "SinkUnavailable",
           "WindowDecision", "WindowSink", "alert_levels", "severity"]

log = logging.getLogger("sci_monitor.sink")
T = TypeVar("T")


class SinkError(RuntimeError):
    """Storage failed; the message has the server's text (never a secret)."""


class SinkUnavailable(SinkError):
    """Transient: the store could not be reached, timed out or answered 429/5xx. Worth another try."""


class SinkRejected(SinkError):
    """Permanent: the store refused the batch (HTTP 4xx, a bad point). Retrying the same batch cannot help."""


class SinkClosed(SinkError):
    """The retry wait was interrupted because the worker is stopping; the batch was not written."""


ALERT_CODES = {None: 0, "warning": 1, "critical": 2}  # the stored ``alert`` field of a window's severity


def severity(delta_sp: float, warning: float, critical: float) -> str | None:
    """ΔSP alert level: "critical" ≥ critical, "warning" ≥ warning, else None (critical is tested first, so equal
    levels give "critical").

    >>> severity(0.29, 0.3, 0.5) is None, severity(0.3, 0.3, 0.5), severity(0.5, 0.3, 0.5)
    (True, 'warning', 'critical')
    >>> severity(0.9, 0.3, math.inf)  # a missing level never fires
    'warning'
    """
    if delta_sp >= critical:
        return "critical"
    if delta_sp >= warning:
        return "warning"
    return None


def alert_levels(result: WindowResult, warning: float | None = None,
                 critical: float | None = None) -> tuple[float, float] | None:
    """The ΔSP (warning, critical) levels for a window: the serving card's (``result.alerts``), each replaced by
    the override when it is not None (the settings ``alert_threshold`` / ``alert_critical``, for every model). A
    level neither gives is ``inf`` (never fires); None when no level applies (no model ran, or neither the card
    nor the settings give one)."""
    if not result.served:
        return None
    card = result.alerts
    w = warning if warning is not None else (card.warning if card is not None else math.inf)
    c = critical if critical is not None else (card.critical if card is not None else math.inf)
    return None if math.isinf(w) and math.isinf(c) else (w, c)


@dataclass(frozen=True, slots=True)
class WindowDecision:
    """The worker's outcome for one window: what went in, what the controller decided, when, where, and the ΔSP
    alert levels (warning, critical) in force for it (:func:`alert_levels`; None: it cannot alert)."""

    window: SensorWindow
    result: WindowResult
    latency_ms: float  # Kafka produce time of the window -> decision
    worker: str
    levels: tuple[float, float] | None = None

    @property
    def decision(self) -> str:
        return "abstained" if self.result.abstained else "stopped"

    @property
    def severity(self) -> str | None:
        """"warning" / "critical" when ΔSP reaches that level, else None."""
        return None if self.levels is None else severity(self.result.delta_sp, *self.levels)

    @property
    def alert(self) -> int:
        """The severity as stored: 0 none, 1 warning, 2 critical."""
        return ALERT_CODES[self.severity]

    @property
    def alert_threshold(self) -> float | None:
        """The level that was crossed (None without an alert)."""
        level = self.severity
        if level is None:
            return None
        return self.levels[1] if level == "critical" else self.levels[0]

    @property
    def correct(self) -> bool | None:
        """Prediction == ground truth; None when either is unknown."""
        if self.window.label is None or not self.result.served:
            return None
        return self.window.label == self.result.label

    @property
    def max_prob(self) -> float:
        """Largest class probability; NaN when no model ran (e.g. an unsupported lead)."""
        return float(self.result.probs.max()) if self.result.probs.size else math.nan

    def label_message(self) -> LabelMessage:
        from streams.contracts import LabelMessage

        w, r = self.window, self.result
        return LabelMessage(
            stream=w.stream, modality=w.modality, lead=r.lead, seq=w.seq, t0_ns=w.t0_ns, model=r.model,
            label=r.label, probs={c: round(float(p), 6) for c, p in zip(r.classes, r.probs, strict=True)},
            sp=round(r.sp, 6), delta_sp=round(r.delta_sp, 6), passes=r.passes, decision=self.decision,
            reason=r.reason, novelty=_finite(r.novelty), quality=r.quality, confidence=_finite(r.confidence),
            truth=w.label, correct=self.correct, latency_ms=round(self.latency_ms, 3), worker=self.worker)


def _finite(x: float) -> float | None:
    """``x`` rounded to 6 decimals, None when it is NaN or infinite (messages carry null).

    >>> _finite(1.23456789), _finite(math.nan)
    (1.234568, None)
    """
    return round(float(x), 6) if math.isfinite(x) else None


@runtime_checkable
class WindowSink(Protocol):
    """Storage for decisions. ``write`` makes one attempt and raises :class:`SinkUnavailable` or
    :class:`SinkRejected`; retries belong to :class:`RetryPolicy`, not to sinks."""

    def write(self, decisions: Sequence[WindowDecision]) -> None: ...

    def health(self) -> tuple[bool, str]:
        """(reachable, one line saying what or why not)."""
        ...

    def counters(self) -> Mapping[str, int]:
        """Running totals to show (e.g. ``written``, ``rejected``)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff ``backoff_s · 2^(k-1)`` capped at ``max_backoff_s`` between attempts, at most
    ``max_attempts`` attempts (0 = until it succeeds or ``stop`` is set; each failed attempt is logged either
    way). Only :class:`SinkUnavailable` is retried.

    >>> RetryPolicy(max_attempts=4, backoff_s=0.5, max_backoff_s=1.5).delays()
    [0.5, 1.0, 1.5]
    """

    max_attempts: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"RetryPolicy needs non-negative values, got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt - 1, 60))

    def delays(self) -> list[float]:
        """The waits between the attempts of a bounded policy."""
        return [self.delay(k) for k in range(1, self.max_attempts)]

    def call(self, fn: Callable[[], T], what: str, *, stop: threading.Event | None = None,
             on_retry: Callable[[int, SinkUnavailable], None] | None = None) -> T:
        """``fn()`` under this policy. Raises the last :class:`SinkUnavailable` once the attempts are spent,
        :class:`SinkRejected` at once, :class:`SinkClosed` when ``stop`` is set while waiting. ``on_retry(attempt,
        error)`` is called after each failed attempt that will be retried (for counters)."""
        attempt, t0 = 0, time.monotonic()
        while True:
            attempt += 1
            try:
                return fn()
            except SinkUnavailable as exc:
                if self.max_attempts and attempt >= self.max_attempts:
                    if attempt > 1:  # a single try is the caller's to report
                            log.error("%s failed after %d attempts in %.1f s: %s", what, attempt,
                                  time.monotonic() - t0, exc)
                    raise
                wait = self.delay(attempt)
                limit = f"/{self.max_attempts}" if self.max_attempts else " (retrying until written)"
                log.warning("%s failed (attempt %d%s, %.1f s so far): %s; next try in %.1f s", what, attempt, limit,
                            time.monotonic() - t0, exc, wait)
                if on_retry is not None:
                    on_retry(attempt, exc)
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(wait):
                    raise SinkClosed(f"{what}: stopped while waiting to retry ({exc})") from exc
