"""Failure isolation inside a batch: one bad window costs nothing but itself.

- :func:`bisect` runs a batch operation (classify, store) on a list; when it raises one of the errors that
  ``split_on`` names, the list is halved and each half is retried, down to single items, so the items that make
  it fail are found in O(k log n) calls for k offenders and every other item still gets its result.
- :func:`non_finite` says why a model output cannot be published (NaN/inf SP, ΔSP or probabilities).
- :func:`withheld` keeps Faust from committing the offsets of a batch: ``take_events`` acks every buffered event
  after the agent's body and in its ``finally``, also when the agent was cancelled mid-batch (shutdown); a
  withheld message is marked acknowledged without being recorded as such, so Faust's ack is a no-op, its offset
  is not committed and the message is delivered again after a restart.
- :func:`release` acknowledges withheld events after all. The worker withholds every batch as it takes it and
  releases it once its outputs exist, batch after batch in the order taken, so Faust never records an offset
  whose window has no outputs yet, nor one past it; a batch it abandons is never released.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bisect(items: Sequence[T], run: Callable[[Sequence[T]], Sequence[R] | None],
           split_on: tuple[type[BaseException], ...] = (Exception,)) -> list[R | BaseException | None]:
    """``run(items)`` with failures isolated to the items that cause them.

    ``run`` takes a list and returns one result per item (or None for "done, nothing to return"). When it raises
    an error of a ``split_on`` type, each half is run again; a single item that still fails gets the exception as
    its result. Errors of other types propagate (e.g. "storage unavailable": retrying halves cannot help).

    >>> def double(xs):
    ...     if 3 in xs:
    ...         raise ValueError("3 is bad")
    ...     return [2 * x for x in xs]
    >>> [r if isinstance(r, int) else str(r) for r in bisect([1, 2, 3, 4, 5], double)]
    [2, 4, '3 is bad', 8, 10]
    """
    if not items:
        return []
    try:
        out = run(items)
    except split_on as exc:
        if len(items) == 1:
            return [exc]
        mid = len(items) // 2
        return bisect(items[:mid], run, split_on) + bisect(items[mid:], run, split_on)
    if out is None:
        return [None] * len(items)
    out = list(out)
    if len(out) != len(items):
        raise RuntimeError(f"batch operation returned {len(out)} results for {len(items)} items")
    return out


def non_finite(sp: float, delta_sp: float, probs: Iterable[float]) -> str | None:
    """Why a decision cannot be published, or None when every number is finite.

    >>> non_finite(0.9, 0.05, [0.9, 0.1]) is None
    True
    >>> non_finite(float("nan"), 0.05, [0.5, 0.5])
    'model output not finite: sp=nan'
    """
    bad = [f"{name}={value}" for name, value in (("sp", sp), ("delta_sp", delta_sp)) if not math.isfinite(value)]
    probs = list(probs)
    if not all(math.isfinite(p) for p in probs):
        bad.append(f"probs={[round(p, 6) for p in probs]}")
    return f"model output not finite: {', '.join(bad)}" if bad else None


def withheld(events: Iterable[Any]) -> list[Any]:
    """Keep Faust from committing these events' offsets (see the module docstring); returns the ones withheld
    (those not yet acknowledged), for :func:`release`.

    A withheld offset that is never released also holds back the commits of every later offset of its partition
    in this process (Faust commits only up to the first gap).
    """
    out = []
    for ev in events:
        msg = ev.message
        if not msg.acked:
            msg.acked = True
            out.append(ev)
    return out


def release(events: Iterable[Any]) -> None:
    """Acknowledge events that :func:`withheld` returned, as Faust's own ack would have (their offsets may now be
    committed)."""
    for ev in events:
        ev.message.acked = False
        ev.ack()
