"""Per-window isolation inside a worker batch (in-memory channels, toy sinks, the real CWRU model on CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
from test_app_units import MemorySink, _cwru_runtime, _run, _settings, _vibration

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
    assert samples[("sci_windows_total", ("vibration", "stopped"))] + samples.get(
        ("sci_windows_total", ("vibration", "abstained")), 0) == 7
    assert np.isclose(samples[("sci_batch_seconds_count", ())], worker.pipeline.tally.batches)
