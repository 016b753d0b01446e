"""Failure isolation helpers: bisecting a batch to its offenders, finite outputs, withholding Faust acks."""

from __future__ import annotations

import pytest
from faust.types.tuples import TP, ConsumerMessage

from streams.isolation import bisect, non_finite, release, withheld


def test_bisect_finds_every_offender_and_keeps_every_other_result() -> None:
    calls: list[list[int]] = []

    def run(xs):
        calls.append(list(xs))
        if any(x % 7 == 0 for x in xs):
            raise ValueError(f"bad in {len(xs)}")
        return [x + 100 for x in xs]

    out = bisect(list(range(1, 33)), run)
    assert [type(r).__name__ for r in out if not isinstance(r, int)] == ["ValueError"] * 4  # 7, 14, 21, 28
    assert [r for r in out if isinstance(r, int)] == [x + 100 for x in range(1, 33) if x % 7]
    assert len(calls) <= 1 + 2 * 4 * 5  # k offenders cost O(k log n) calls, not n
    assert bisect([], run) == []
    assert bisect([1, 2], lambda xs: None) == [None, None]


def test_bisect_lets_other_errors_through_and_checks_the_result_count() -> None:
    def unavailable(xs):
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        bisect([1, 2, 3], unavailable, split_on=(ValueError,))
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        bisect([1, 2], lambda xs: [0])


def test_non_finite_names_the_bad_numbers() -> None:
    assert non_finite(0.5, 0.1, [0.5, 0.5]) is None
    assert (non_finite(0.5, float("inf"), [float("nan"), 1.0])
            == "model output not finite: delta_sp=inf, probs=[nan, 1.0]")


class _Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message) -> bool:  # faust's Consumer.ack: records the offset as safe to commit
        message.acked = True
        self.acked.append(message.offset)
        return True


class _Event:
    def __init__(self, message, consumer) -> None:
        self.message, self.consumer = message, consumer

    def ack(self) -> bool:  # as faust.Event.ack
        return self.message.ack(self.consumer)


def test_withheld_messages_are_never_acked_to_the_consumer() -> None:
    msgs = [ConsumerMessage("t", 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP("t", 0)) for offset in range(3)]
    for m in msgs:
        m.incref()
    consumer = _Consumer()
    msgs[0].ack(consumer)  # processed normally before the abandonment
    held = withheld([_Event(m, consumer) for m in msgs])
    assert [ev.message.offset for ev in held] == [1, 2]
    for m in msgs:  # what take_events' finally does after the agent's body, or on cancellation
        assert m.ack(consumer) is False
    assert consumer.acked == [0]
    release(held)  # once their outputs exist: acked to the consumer as Faust's own ack would have
    assert consumer.acked == [0, 1, 2]
