"""The worker in process, without a broker: the agent driven by Faust's ``test_context()``, outputs on in-memory
channels, storage in an in-memory sink. Decode → classify → publish (labels, escalations, alerts, dead letters)
→ store, and the plug points (a toy modality and a toy sink added here without editing any module)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch
from data_marks import needs_data

from controller.reasons import Reason
from models.architectures import PaperBearingNet
from models.checkpoint import ModelCard, save_checkpoint
from models.controller_card import AlertLevels
from streams import modalities
from streams.app import _broker_url, create_worker
from streams.contracts import SensorWindow, decode_dead_letter, encode_window
from streams.runtime import ModelRuntime, WindowResult
from streams.settings import load_settings
from streams.sinks import (
    RetryPolicy,
    SinkRejected,
    SinkUnavailable,
    WindowDecision,
    WindowSink,
    alert_levels,
    severity,
)

OUTPUT_ROLES = ("labels", "escalations", "alerts", "deadletter")


class MemorySink:
    """A toy :class:`WindowSink`: keeps the decisions in a list; fails ``fail`` times first with ``error``."""

    def __init__(self, fail: int = 0, error: type[Exception] = SinkUnavailable) -> None:
        self.rows: list[WindowDecision] = []
        self.fail, self.error, self.calls, self.closed = fail, error, 0, False

    def write(self, decisions: Sequence[WindowDecision]) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise self.error(f"toy failure {self.calls}")
        self.rows.extend(decisions)

    def health(self) -> tuple[bool, str]:
        return True, "memory"

    def counters(self) -> Mapping[str, int]:
        return {"written": len(self.rows)}

    def close(self) -> None:
        self.closed = True


def _settings(**overrides):
    return dataclasses.replace(load_settings(env={}), **{"device": "cpu", "batch_size": 8, "batch_timeout_s": 0.01,
                                                         "sink_backoff_s": 0.0, "health_port": 0, **overrides})


def _run(settings, runtime_factory, sink, payloads, expect: dict[str, int], timeout_s: float = 60.0, wrap=None):
    """Put ``payloads`` (key, value) through the agent; return the outputs by role once ``expect`` counts arrived
    (and nothing more within a short grace period). ``wrap(role, channel)`` may replace an output channel."""

    def outputs(app):
        chans = {role: app.channel() for role in OUTPUT_ROLES}
        return {role: wrap(role, ch) for role, ch in chans.items()} if wrap else chans

    async def main():
        worker = create_worker(settings, runtime_factory, lambda: sink, outputs=outputs)
        subscribers = {role: aiter(ch) for role, ch in worker.pipeline.outputs.items()}
        got: dict[str, list] = {role: [] for role in OUTPUT_ROLES}
        async with worker.pipeline, worker.agent.test_context() as agent:
            for key, value in payloads:
                await agent.put(value, key=key)

            async def drain(role, n):
                while len(got[role]) < n:
                    got[role].append(await subscribers[role].__anext__())

            await asyncio.wait_for(asyncio.gather(*(drain(r, n) for r, n in expect.items())), timeout_s)
            await asyncio.sleep(0.2)  # anything beyond the expected counts would be a bug
            for role, sub in subscribers.items():
                while not sub.empty():
                    got[role].append(sub.queue.get_nowait())
        return worker, got

    return asyncio.run(main())


class RefusingChannel:
    """An output channel that refuses the messages of one key: raising when handed the message (``at="send"``) or
    failing its acknowledgement (``at="ack"``); everything else goes to the real channel."""

    def __init__(self, inner, key: bytes, exc: Exception, at: str) -> None:
        self.inner, self.key, self.exc, self.at = inner, key, exc, at

    async def send(self, *, key, value):
        if key != self.key:
            return await self.inner.send(key=key, value=value)
        if self.at == "send":
            raise self.exc
        ack = asyncio.get_running_loop().create_future()
        ack.set_exception(self.exc)
        return ack

    def __aiter__(self):
        return self.inner.__aiter__()


@pytest.mark.parametrize("at", ["send", "ack"])
def test_an_output_the_broker_refuses_costs_only_its_window(at):
    """A permanent publishing error (here: too large) on one window's alert, raised when the message is handed over or
    when it is acknowledged, dead-letters that window at stage ``send``; the other windows of its batch are published
    and counted, and every window was stored before anything was published."""
    settings = _settings(alert_threshold=0.0, alert_critical=1.0)  # every served window alerts
    windows = [_vibration(i) for i in range(5)]
    bad = windows[2].key
    refuse = ValueError("message of 2000000 bytes is too large for the broker")
    wrap = lambda role, ch: RefusingChannel(ch, bad, refuse, at) if role == "alerts" else ch  # noqa: E731
    sink = MemorySink()
    worker, got = _run(settings, _cwru_runtime, sink, [(w.key, encode_window(w)) for w in windows],
                       {"labels": 5, "alerts": 4, "deadletter": 1}, wrap=wrap)

    assert sorted(json.loads(e.value)["seq"] for e in got["alerts"]) == [0, 1, 3, 4]
    (dead,) = [decode_dead_letter(e.value) for e in got["deadletter"]]
    assert (dead.key, dead.stage, dead.error_type) == (bad, "send", "ValueError")
    assert "could not be published" in dead.reason and "too large" in dead.reason
    assert dead.original == encode_window(windows[2])
    # its label had been handed over before the alert failed (at-least-once), the others' labels all arrived
    assert sorted(json.loads(e.value)["seq"] for e in got["labels"]) == [0, 1, 2, 3, 4]
    assert sorted(d.window.seq for d in sink.rows) == [0, 1, 2, 3, 4]
    t = worker.pipeline.tally
    assert (t.windows, t.dead_letters, t.alerts) == (4, 1, 4)


def _vibration(seq: int, *, lead: str | None = None, fs: float = 12000.0, n: int = 1024) -> SensorWindow:
    rng = np.random.default_rng(seq)
    return SensorWindow("vib-1", "vibration", fs, 1_700_000_000_000_000_000 + seq, seq,
                        rng.normal(0, 0.1, n).astype(np.float32), label="normal", lead=lead)


def _normal_frame(seq: int) -> SensorWindow:
    """A real normal-bearing frame (the CWRU normal baseline's test block, at 12 kHz): what the cwru model answers.
    (White noise, as :func:`_vibration` makes, is not a bearing signal, and the novelty gate may say so.)"""
    from models.data import cwru

    rec = next(r for r in cwru.list_recordings(read_rpms=False) if r.fault == "normal")
    signal = cwru.load_signal(rec)
    start, _ = cwru.split_blocks(signal.size)["test"]
    frame = signal[start + seq * cwru.FRAME : start + (seq + 1) * cwru.FRAME]
    return SensorWindow("vib-1", "vibration", 12000.0, 1_700_000_000_000_000_000 + seq, seq,
                        np.asarray(frame, np.float32), label="normal")


def _cwru_runtime():
    return ModelRuntime("cpu", {("vibration", "DE"): "cwru"})


def test_decode_classify_publish_and_store_one_batch():
    settings = _settings(alert_threshold=0.0, alert_critical=1.0)  # overrides: every served window alerts (warning)
    good = [_vibration(i) for i in range(5)]
    fe = _vibration(5, lead="FE")  # no model serves vibration:FE -> escalation, not a dead letter
    wrong_fs = _vibration(6, fs=48000.0)
    payloads = [(w.key, encode_window(w)) for w in [*good, fe, wrong_fs]] + [(b"junk:0", b"not a window")]
    sink = MemorySink()
    worker, got = _run(settings, _cwru_runtime, sink, payloads, {"labels": 6, "alerts": 5, "deadletter": 2})

    labels = {json.loads(e.value)["seq"]: json.loads(e.value) for e in got["labels"]}
    assert sorted(labels) == [0, 1, 2, 3, 4, 5] and len(got["labels"]) == 6
    for seq in range(5):
        m = labels[seq]
        assert m["model"] == "cwru" and m["lead"] == "DE" and 0 <= m["passes"] <= 25
        assert m["passes"] > 0 or m["reason"] in ("unfamiliar", "signal_quality")  # white noise may be gated
        assert m["label"] in ("normal", "ball", "inner", "outer") and m["truth"] == "normal"
        assert m["correct"] == (m["label"] == "normal") and abs(sum(m["probs"].values()) - 1) < 1e-4
    unserved = labels[5]
    assert (unserved["decision"], unserved["reason"], unserved["lead"], unserved["passes"]) == (
        "abstained", Reason.UNSUPPORTED_LEAD.label, "FE", 0)
    # escalations are exactly the abstained windows, keyed stream:seq; alerts only for windows a model saw
    abstained = {k for k, m in labels.items() if m["decision"] == "abstained"}
    assert {json.loads(e.value)["seq"] for e in got["escalations"]} == abstained and 5 in abstained
    assert {e.key for e in got["escalations"]} == {f"vib-1:{k}".encode() for k in abstained}
    alerts = [json.loads(e.value) for e in got["alerts"]]
    assert sorted(a["seq"] for a in alerts) == [0, 1, 2, 3, 4]
    assert all(a["severity"] == "warning" and a["threshold"] == 0.0 for a in alerts)
    dead = sorted((decode_dead_letter(e.value) for e in got["deadletter"]), key=lambda d: d.offset)
    assert [d.error_type for d in dead] == ["ModelInputError", "ContractError"]
    assert "needs fs = 12000 Hz" in dead[0].reason and "bad magic" in dead[1].reason
    assert dead[1].original == b"not a window" and dead[1].key == b"junk:0"
    # every labelled window is stored once, with the same decision
    assert sorted(d.window.seq for d in sink.rows) == [0, 1, 2, 3, 4, 5]
    for d in sink.rows:
        assert d.decision == labels[d.window.seq]["decision"] and d.result.label == labels[d.window.seq]["label"]
        assert d.alert == (1 if d.result.served else 0)
    t = worker.pipeline.tally
    assert (t.windows, t.dead_letters, t.alerts, t.escalations) == (6, 2, 5, len(abstained))
    assert sink.closed  # on_stop closed the sink


def test_garbage_collections_are_measured_while_the_pipeline_runs():
    worker = create_worker(_settings(), _cwru_runtime, MemorySink, outputs=lambda app: {
        role: app.channel() for role in OUTPUT_ROLES})
    registry = worker.pipeline.metrics.registry

    def collections() -> float:
        return registry.get_sample_value("sci_gc_pause_seconds_count", {"generation": "2"}) or 0.0

    async def main() -> float:
        async with worker.pipeline:
            before = collections()
            gc.collect()
            return collections() - before

    assert asyncio.run(main()) == 1.0
    stopped = collections()
    gc.collect()
    assert collections() == stopped  # once stopped, no longer observed


def _sine_with_noise(seq: int) -> SensorWindow:
    """A 1 kHz tone in light noise: passes the input checks, unlike any bearing the cwru model was trained on."""
    t = np.arange(1024) / 12000.0
    x = 0.2 * np.sin(2 * np.pi * 1000 * t) + np.random.default_rng(seq).normal(0, 0.02, 1024)
    return SensorWindow("vib-2", "vibration", 12000.0, 1_700_000_000_000_000_000 + seq, seq, x.astype(np.float32),
                        label="normal")


@needs_data("cwru")
def test_outputs_say_why_and_alert_by_the_cards_levels():
    """Default settings: no alert override, so each window alerts by its card's ΔSP levels (derived on validation,
    not the old 0.3 / 0.5); every output carries the novelty score, the input-check verdict and the confidence."""
    answered, tone, fe = _normal_frame(0), _sine_with_noise(1), _vibration(3, lead="FE")
    flat = SensorWindow("vib-1", "vibration", 12000.0, 1_700_000_000_000_000_002, 2, np.zeros(1024, np.float32))
    served: list[ModelRuntime] = []

    def runtime():
        served.append(_cwru_runtime())
        return served[-1]

    sink = MemorySink()
    settings = _settings()
    assert (settings.alert_threshold, settings.alert_critical) == (None, None)
    payloads = [(w.key, encode_window(w)) for w in (answered, tone, flat, fe)]
    _, got = _run(settings, runtime, sink, payloads, {"labels": 4, "escalations": 3})
    levels = served[0].models[("vibration", "DE")].card.controller.alerts
    assert isinstance(levels, AlertLevels) and (levels.warning, levels.critical) != (0.3, 0.5)

    labels = {(m["stream"], m["seq"]): m for m in (json.loads(e.value) for e in got["labels"])}
    m = labels[("vib-1", 0)]  # answered by the policy: input checks passed, familiar, confident
    assert (m["decision"], m["quality"]) == ("stopped", "ok") and m["passes"] > 0
    assert 0 <= m["novelty"] <= 1 and 0 <= m["confidence"] <= 1
    m = labels[("vib-2", 1)]  # an unknown signal, stopped by the gate before any MC pass
    assert (m["decision"], m["reason"], m["passes"], m["quality"]) == ("abstained", "unfamiliar", 0, "ok")
    assert m["novelty"] > 1 and 0 <= m["confidence"] <= 1
    m = labels[("vib-1", 2)]  # a flat line: bad signal, not an unknown one
    assert (m["decision"], m["reason"], m["passes"], m["quality"]) == ("abstained", "signal_quality", 0, "flat")
    m = labels[("vib-1", 3)]  # no model: nothing to say
    assert (m["reason"], m["novelty"], m["quality"], m["confidence"]) == ("unsupported_lead", None, None, None)

    escalations = {(e["stream"], e["seq"]): e for e in (json.loads(x.value) for x in got["escalations"])}
    assert {k: (e["reason"], e["quality"]) for k, e in escalations.items()} == {
        ("vib-2", 1): ("unfamiliar", "ok"), ("vib-1", 2): ("signal_quality", "flat"),
        ("vib-1", 3): ("unsupported_lead", None)}
    assert escalations[("vib-2", 1)]["novelty"] == labels[("vib-2", 1)]["novelty"]

    # alerts: exactly the served windows whose ΔSP reaches the card's levels, with the level crossed
    expected = {k: severity(m["delta_sp"], levels.warning, levels.critical) for k, m in labels.items()
                if m["model"]}
    alerts = {(a["stream"], a["seq"]): a for a in (json.loads(e.value) for e in got["alerts"])}
    assert {k: a["severity"] for k, a in alerts.items()} == {k: v for k, v in expected.items() if v}
    for a in alerts.values():
        assert a["threshold"] == (levels.critical if a["severity"] == "critical" else levels.warning)
        assert a["novelty"] == labels[(a["stream"], a["seq"])]["novelty"]
    # the tone alerts by the card's levels, not as the old fixed 0.3 / 0.5 would have said
    tone_dsp = labels[("vib-2", 1)]["delta_sp"]
    assert alerts[("vib-2", 1)]["severity"] != severity(tone_dsp, 0.3, 0.5)
    # storage carries the same severity as a number
    stored = {(d.window.stream, d.window.seq): d for d in sink.rows}
    assert {k: d.alert for k, d in stored.items()} == {k: {None: 0, "warning": 1, "critical": 2}[expected.get(k)]
                                                       for k in labels}
    assert stored[("vib-2", 1)].result.quality == "ok" and stored[("vib-2", 1)].result.novelty > 1


def test_alert_levels_come_from_the_card_unless_overridden():
    card = AlertLevels(warning=0.12, critical=0.2, rates=(0.05, 0.01))
    r = WindowResult("cwru", ("a", "b"), "a", np.array([0.6, 0.4], np.float32), 0.7, 0.15, 3, False, "threshold",
                     "DE", alerts=card)
    assert alert_levels(r) == (0.12, 0.2)
    assert alert_levels(r, warning=0.3) == (0.3, 0.2)  # each level is overridden on its own
    assert alert_levels(r, 0.3, 0.5) == (0.3, 0.5)
    no_card = dataclasses.replace(r, alerts=None)
    assert alert_levels(no_card) is None  # a card without levels: no ΔSP alerts ...
    assert alert_levels(no_card, warning=0.1) == (0.1, float("inf"))  # ... unless the settings give one
    assert alert_levels(WindowResult.unserved("FE"), 0.0, 0.0) is None  # no model ran: never an alert
    w = _vibration(0)
    d = WindowDecision(w, r, 1.0, "w", alert_levels(r))
    assert (d.severity, d.alert, d.alert_threshold) == ("warning", 1, 0.12)
    d = WindowDecision(w, r, 1.0, "w", alert_levels(r, 0.3, 0.5))
    assert (d.severity, d.alert, d.alert_threshold) == (None, 0, None)
    d = WindowDecision(w, dataclasses.replace(r, delta_sp=0.2), 1.0, "w", alert_levels(r))
    assert (d.severity, d.alert, d.alert_threshold) == ("critical", 2, 0.2)
    assert WindowDecision(w, no_card, 1.0, "w", None).alert == 0


def test_storage_retries_then_dead_letters_when_the_sink_rejects():
    w = _vibration(0)
    flaky = MemorySink(fail=2)  # unavailable twice, then written: retried under the policy, no dead letter
    worker, got = _run(_settings(), _cwru_runtime, flaky, [(w.key, encode_window(w))], {"labels": 1})
    assert len(flaky.rows) == 1 and flaky.calls == 3 and worker.pipeline.tally.sink_retries == 2
    assert got["deadletter"] == []
    rejecting = MemorySink(fail=10, error=SinkRejected)  # 4xx: not retried, the window is dead-lettered
    worker, got = _run(_settings(), _cwru_runtime, rejecting, [(w.key, encode_window(w))], {"deadletter": 1})
    assert rejecting.calls == 1 and rejecting.rows == []
    assert got["labels"] == []  # stored before published: a rejected window has its dead letter only
    dead = decode_dead_letter(got["deadletter"][0].value)
    assert dead.error_type == "SinkRejected" and "toy failure 1" in dead.reason and dead.key == w.key
    assert dead.stage == "store" and worker.pipeline.tally.windows == 0


def _toy_checkpoint(tmp_path, sp_star: float) -> str:
    """A tiny untrained 2-class model on 200-sample windows at 200 Hz, saved as a checkpoint; returns its path."""
    torch.manual_seed(0)
    card = ModelCard(name="toy", arch="paper_bearing_net", arch_params={"n_classes": 2}, dataset="toy",
                     modality="toy", split="none (untrained)", classes=["calm", "busy"], fs=200.0,
                     input_length=200, aux=None, temperature=1.0, seed=0,
                     controller={"policy": "threshold", "params": {"sp_star": sp_star, "t_min": 2}, "t_max": 4,
                                 "sp_star": 0.85})
    return str(save_checkpoint(PaperBearingNet(n_classes=2), card, tmp_path))


def test_a_toy_modality_and_a_toy_sink_plug_in_without_editing_any_module(tmp_path):
    ckpt = _toy_checkpoint(tmp_path, sp_star=1.01)  # SP never reaches 1.01: every window abstains at t_max
    spec = modalities.register(modalities.ModalitySpec(
        name="toy", default_lead="A", checkpoints={"A": ckpt},
        check=lambda w: "toy windows must not be all zeros" if not w.samples.any() else None))
    try:
        settings = _settings()
        assert settings.served_models[("toy", "A")] == ckpt  # the registry's default reaches the settings
        rng = np.random.default_rng(1)
        windows = [SensorWindow(f"toy-{i % 2}", "toy", 200.0, 10**18 + i, i // 2,
                                rng.normal(size=200).astype(np.float32), label="calm") for i in range(6)]
        zeros = SensorWindow("toy-9", "toy", 200.0, 10**18, 0, np.zeros(200, np.float32))
        other_lead = dataclasses.replace(windows[0], stream="toy-8", lead="B")
        sink = MemorySink()

        def runtime():  # only the toy model (the default ones would load too, slower)
            return ModelRuntime("cpu", {k: v for k, v in settings.served_models.items() if k[0] == "toy"})

        payloads = [(w.key, encode_window(w)) for w in [*windows, zeros, other_lead]]
        _, got = _run(settings, runtime, sink, payloads, {"labels": 7, "escalations": 7, "deadletter": 1})
        assert isinstance(sink, WindowSink)
        msgs = [json.loads(e.value) for e in got["labels"]]
        served = [m for m in msgs if m["passes"]]
        assert len(served) == 6 and all(m["model"] == "toy" and m["modality"] == "toy" for m in served)
        assert all(m["decision"] == "abstained" and m["reason"] == "budget" and m["passes"] == 4 for m in served)
        assert [m["reason"] for m in msgs if not m["passes"]] == ["unsupported_lead"]
        assert "must not be all zeros" in decode_dead_letter(got["deadletter"][0].value).reason
        assert sorted((d.window.stream, d.window.seq) for d in sink.rows) == sorted(
            [(w.stream, w.seq) for w in windows] + [("toy-8", 0)])
        assert spec.lead_of(None) == "A"
    finally:
        modalities.unregister("toy")


def test_derived_points_are_skipped_not_fatal_with_a_sink_without_write_lines(caplog):
    """The trust metrics go through the sink when it can store line protocol; a plain WindowSink skips them."""
    sink = MemorySink()

    async def main():
        worker = create_worker(_settings(), _cwru_runtime, lambda: sink,
                               outputs=lambda app: {role: app.channel() for role in OUTPUT_ROLES})
        async with worker.pipeline:
            took = await worker.pipeline.store_lines(["sci_trust n=1i 1"], "storing 1 point", RetryPolicy(1, 0.0))
            await worker.trust.flush()  # must neither raise nor count the skipped points as written
        return took

    assert asyncio.run(main()) is False
    assert caplog.text.count("has no write_lines") == 1 and sink.rows == []


def test_retry_policy_is_bounded_and_does_not_retry_rejections():
    calls = []

    def unavailable():
        calls.append(1)
        raise SinkUnavailable("down")

    with pytest.raises(SinkUnavailable):
        RetryPolicy(max_attempts=3, backoff_s=0.0).call(unavailable, "test")
    assert len(calls) == 3
    calls.clear()

    def rejected():
        calls.append(1)
        raise SinkRejected("bad point")

    with pytest.raises(SinkRejected):
        RetryPolicy(max_attempts=0, backoff_s=0.0).call(rejected, "test")
    assert len(calls) == 1


def test_an_unbounded_retry_stops_when_the_worker_stops():
    import threading

    from streams.sinks import SinkClosed

    stop = threading.Event()
    attempts = []

    def unavailable():
        attempts.append(1)
        if len(attempts) == 3:
            stop.set()
        raise SinkUnavailable("down")

    with pytest.raises(SinkClosed):
        RetryPolicy(max_attempts=0, backoff_s=0.001).call(unavailable, "test", stop=stop)
    assert len(attempts) == 3


def test_alert_severity_levels():
    assert severity(0.29, 0.3, 0.5) is None
    assert severity(0.3, 0.3, 0.5) == "warning"
    assert severity(0.49, 0.3, 0.5) == "warning"
    assert severity(0.5, 0.3, 0.5) == "critical"


def test_broker_url_accepts_kafka_bootstrap_lists():
    assert _broker_url("a:9092, b:9093") == "kafka://a:9092;kafka://b:9093"


def test_the_consumer_waits_at_most_fetch_wait_s_in_a_fetch():
    """Faust fixes the fetch long-poll at 1.5 s; the worker's consumer is built with ``fetch_wait_s`` instead."""

    async def main():
        worker = create_worker(_settings(fetch_wait_s=0.02), _cwru_runtime, MemorySink,
                               outputs=lambda app: {role: app.channel() for role in OUTPUT_ROLES})
        consumer = worker.app.consumer._thread._create_worker_consumer(worker.app.transport)
        return consumer._fetch_max_wait_ms  # what aiokafka's fetcher is started with

    assert asyncio.run(main()) == 20
