"""Per-window isolation inside a worker batch (in-memory channels, toy sinks, the real CWRU model on CPU)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import types

import numpy as np
from test_app_units import OUTPUT_ROLES, MemorySink, _cwru_runtime, _run, _settings, _vibration

from streams.app import create_worker
from streams.contracts import decode_dead_letter, encode_window
from streams.sinks import SinkRejected


class _Faulty:
    """Wraps a runtime: raises when a batch holds a window of stream ``boom``, NaN SP for stream ``nan``."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.models, self.device = inner.models, inner.device

    def describe(self):
        return self.inner.describe()

    def classify(self, windows):
        self.calls += 1
        if any(w.stream == "boom" for w in windows):
            raise RuntimeError("model exploded")
        out = self.inner.classify(windows)
        return [dataclasses.replace(r, sp=float("nan")) if w.stream == "nan" else r
                for w, r in zip(windows, out, strict=True)]


class _PickySink(MemorySink):
    """Rejects (like a 4xx) any write that holds a decision of stream ``bad-point``."""

    def write(self, decisions) -> None:
        self.calls += 1
        if any(d.window.stream == "bad-point" for d in decisions):
            raise SinkRejected("partial write: points beyond retention policy dropped=1")
        self.rows.extend(decisions)


def _payloads(special: dict[int, str], n: int = 8):
    out = []
    for i in range(n):
        w = _vibration(i)
        if i in special:
            w = dataclasses.replace(w, stream=special[i])
        out.append((w.key, encode_window(w)))
    return out


def test_a_window_that_breaks_classification_costs_only_itself():
    runtime = {}

    def factory():
        runtime["r"] = _Faulty(_cwru_runtime())
        return runtime["r"]

    sink = MemorySink()
    worker, got = _run(_settings(), factory, sink, _payloads({3: "boom", 5: "nan"}),
                       {"labels": 6, "deadletter": 2})
    dead = sorted((decode_dead_letter(m.value) for m in got["deadletter"]), key=lambda d: d.key)
    assert [(d.key, d.stage, d.error_type) for d in dead] == [
        (b"boom:3", "classify", "RuntimeError"), (b"nan:5", "classify", "NonFiniteOutput")]
    assert "model exploded" in dead[0].reason and "sp=nan" in dead[1].reason
    assert len(got["labels"]) == 6 and len(sink.rows) == 6
    assert worker.pipeline.tally.windows == 6 and worker.pipeline.tally.dead_letters == 2
    assert runtime["r"].calls <= 1 + 2 * 3  # bisection, not one call per window


def test_a_point_the_store_rejects_is_found_by_bisection_and_dead_lettered():
    sink = _PickySink()
    worker, got = _run(_settings(), _cwru_runtime, sink, _payloads({6: "bad-point"}),
                       {"labels": 7, "deadletter": 1})
    (dead,) = [decode_dead_letter(m.value) for m in got["deadletter"]]
    assert (dead.key, dead.stage, dead.error_type) == (b"bad-point:6", "store", "SinkRejected")
    assert sorted(d.window.seq for d in sink.rows) == [0, 1, 2, 3, 4, 5, 7]
    assert {m.key for m in got["labels"]} == {f"vib-1:{i}".encode() for i in (0, 1, 2, 3, 4, 5, 7)}
    samples = {(s.name, tuple(s.labels.values())): s.value for f in worker.pipeline.metrics.registry.collect()
               for s in f.samples}
    assert samples[("sci_dead_letters_total", ("store", "SinkRejected"))] == 1
    assert sum(samples.get(("sci_windows_total", ("vibration", d)), 0) for d in ("stopped", "abstained")) == 7
    assert np.isclose(samples[("sci_batch_seconds_count", ())], worker.pipeline.tally.batches)



class _Event:
    """A Faust event as the pipeline sees it; ``ack`` records (offset, stored?) in ``log`` as Faust's would."""

    def __init__(self, key: bytes, value: bytes, offset: int, log: list, sink: MemorySink) -> None:
        self.message = types.SimpleNamespace(key=key, value=value, timestamp=time.time(), topic="in", partition=0,
                                             offset=offset, tp=("in", 0), acked=False)
        self.log, self.sink = log, sink

    def ack(self) -> bool:
        if self.message.acked:
            return False
        self.message.acked = True
        seq = int(self.message.key.split(b":")[1])
        self.log.append((self.message.offset, seq in {d.window.seq for d in self.sink.rows}))
        return True


class _GatedSink(MemorySink):
    """Holds its first write until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, decisions) -> None:
        self.gate.wait(30)
        super().write(decisions)


def test_batches_overlap_and_are_acknowledged_in_order_only_after_their_outputs_exist():
    sink, acks = _GatedSink(), []
    payloads = _payloads({}, n=8)

    async def main():
        worker = create_worker(_settings(), _cwru_runtime, lambda: sink,
                               outputs=lambda app: {role: app.channel() for role in OUTPUT_ROLES})
        p = worker.pipeline
        a, b = ([_Event(k, v, i, acks, sink) for i, (k, v) in enumerate(payloads) if i // 4 == j] for j in (0, 1))
        async with p:
            await p.process(a)  # classified; its outputs are being written (held by the sink)
            for ev in a:  # what Faust's take_events does after the agent's body: a no-op for withheld events
                ev.ack()
            assert acks == [] and not sink.rows
            second = asyncio.ensure_future(p.process(b))  # classifies b, then waits for a's outputs
            await asyncio.sleep(0.5)
            assert not second.done() and acks == []
            sink.gate.set()
            await second
            assert [o for o, _ in acks] == [0, 1, 2, 3] and all(stored for _, stored in acks)
            for ev in b:
                ev.ack()
            for _ in range(100):
                if len(acks) == 8:
                    break
                await asyncio.sleep(0.05)
        return p

    p = asyncio.run(main())
    assert acks == [(i, True) for i in range(8)]  # in the order taken, each after its point was stored
    assert p.tally.batches == 2 and p.tally.windows == 8
