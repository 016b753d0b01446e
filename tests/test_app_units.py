"""The worker in process, without a broker: the agent driven by Faust's ``test_context()``, outputs on in-memory
channels, storage in an in-memory sink. Decode → classify → publish (labels, escalations, alerts, dead letters)
→ store, and the plug points (a toy modality and a toy sink added here without editing any module)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch

from controller.reasons import Reason
from models.architectures import PaperBearingNet
from models.checkpoint import ModelCard, save_checkpoint
from streams import modalities
from streams.app import _broker_url, create_worker, severity
from streams.contracts import SensorWindow, decode_dead_letter, encode_window
from streams.runtime import ModelRuntime
from streams.settings import load_settings
from streams.sinks import RetryPolicy, SinkRejected, SinkUnavailable, WindowDecision, WindowSink

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
    return dataclasses.replace(load_settings(env={}), device="cpu", batch_size=8, batch_timeout_s=0.01,
                               sink_backoff_s=0.0, health_port=0, **overrides)


def _run(settings, runtime_factory, sink, payloads, expect: dict[str, int], timeout_s: float = 60.0):
    """Put ``payloads`` (key, value) through the agent; return the outputs by role once ``expect`` counts arrived
    (and nothing more within a short grace period)."""

    async def main():
        worker = create_worker(settings, runtime_factory, lambda: sink,
                               outputs=lambda app: {role: app.channel() for role in OUTPUT_ROLES})
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


def _vibration(seq: int, *, lead: str | None = None, fs: float = 12000.0, n: int = 1024) -> SensorWindow:
    rng = np.random.default_rng(seq)
    return SensorWindow("vib-1", "vibration", fs, 1_700_000_000_000_000_000 + seq, seq,
                        rng.normal(0, 0.1, n).astype(np.float32), label="normal", lead=lead)


def _cwru_runtime():
    return ModelRuntime("cpu", {("vibration", "DE"): "cwru"})


def test_decode_classify_publish_and_store_one_batch():
    settings = _settings(alert_threshold=0.0, alert_critical=1.0)  # every served window alerts (warning)
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
    t = worker.pipeline.tally
    assert (t.windows, t.dead_letters, t.alerts, t.escalations) == (6, 2, 5, len(abstained))
    assert sink.closed  # on_stop closed the sink


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
