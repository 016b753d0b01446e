"""Replay of real recordings as sensor streams: ECG beat windows, CWRU frames, and a Kafka round trip."""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import os
import signal
import time
import uuid

import numpy as np
import pytest

from models.data import cwru, mitdb
from models.data.morph import morph_features, running_template
from models.data.rr import RR_FEATURES, rr_features
from streams.contracts import ContractError, SensorWindow, decode_window, encode_window
from streams.replay import (
    Replayer,
    ecg_windows,
    publish_raw,
    replay_command,
    vibration_windows,
)
from streams.rpeaks import detect_rpeaks

N_RR = len(RR_FEATURES)

START_NS = 1_700_000_000_000_000_000


@functools.cache
def ecg100() -> tuple[SensorWindow, ...]:
    try:
        return tuple(ecg_windows("100", start_ns=START_NS))
    except FileNotFoundError as e:
        pytest.skip(f"MIT-BIH data not available: {e}")


@functools.cache
def rec100() -> mitdb.EcgRecord:
    return mitdb.load_record("100")


def test_ecg_windows_record_100_shape_and_count() -> None:
    ws = ecg100()
    rec = rec100()
    assert abs(len(ws) - rec.beat_samples.size) <= 5  # 2273 annotated beats; the first/last may not fit
    assert all(w.samples.shape == (mitdb.BEFORE + mitdb.AFTER,) and w.samples.dtype == np.float32 for w in ws)
    assert [w.seq for w in ws] == list(range(len(ws)))
    assert {w.stream for w in ws} == {"mitdb-100"}
    assert {w.modality for w in ws} == {"ecg"} and {w.fs for w in ws} == {360.0}
    assert np.all(np.diff([w.t0_ns for w in ws]) > 0)


def test_ecg_windows_are_raw_signal_around_the_detected_peak() -> None:
    ws = ecg100()
    rec = rec100()
    peaks = np.array([int(w.meta["sample"]) for w in ws])
    for w, p in zip(ws[:: max(1, len(ws) // 50)], peaks[:: max(1, len(ws) // 50)], strict=True):
        np.testing.assert_array_equal(w.samples, rec.signal[p - mitdb.BEFORE : p + mitdb.AFTER])
        assert w.t0_ns == START_NS + round((p - mitdb.BEFORE) * 1e9 / 360)
    # the detected peak (index 96) is within ±3 samples of the reference annotation
    ref = rec.beat_samples
    j = np.clip(np.searchsorted(ref, peaks), 1, ref.size - 1)
    dist = np.minimum(np.abs(ref[j - 1] - peaks), np.abs(ref[j] - peaks))
    assert np.mean(dist <= 3) >= 0.99
    # record 100 has upright R waves: the window maximum sits at the peak index
    argmax = np.array([int(np.argmax(w.samples)) for w in ws])
    assert np.mean(np.abs(argmax - mitdb.BEFORE) <= 3) >= 0.99


def test_ecg_windows_labels_and_rr_features() -> None:
    ws = ecg100()
    rec = rec100()
    labels = [w.label for w in ws]
    assert np.mean([lab is not None for lab in labels]) >= 0.99
    assert set(labels) <= {"N", "S", "V", "F", None}
    # labels agree with the annotation nearest to the detected peak
    peaks = np.array([int(w.meta["sample"]) for w in ws])
    nearest = np.abs(rec.beat_samples[None, :200] - peaks[:150, None]).argmin(axis=1)
    assert labels[:150] == [str(a) for a in rec.aami[nearest]]
    counts = {c: labels.count(c) for c in ("N", "S", "V")}
    assert counts["S"] >= 30 and counts["V"] == 1  # record 100: 33 A beats, 1 V beat
    # RR features equal the offline features of all detected peaks (streamed rows are final, not provisional)
    detected = detect_rpeaks(rec.signal, 360)
    rr_offline = rr_features(detected, 360.0)[np.searchsorted(detected, peaks)]
    rr_stream = np.array([w.features["beat"][:N_RR] for w in ws], dtype=np.float32)
    np.testing.assert_array_equal(rr_stream, rr_offline)
    assert np.all(rr_stream[:, :3] > 0.2) and np.all(rr_stream[:, :3] < 3.0)
    # template features equal the offline function on the whole sequence of the stream's windows
    beat = np.array([w.features["beat"] for w in ws], dtype=np.float32)
    assert beat.shape == (len(ws), mitdb.BEAT_AUX)
    x_all = np.stack([w.samples for w in ws])
    np.testing.assert_allclose(beat[:, N_RR : N_RR + 3], morph_features(x_all), atol=1e-5)
    np.testing.assert_allclose(beat[:, N_RR + 3 :], running_template(x_all), atol=1.01e-4)  # rounded to 1e-4 mV


def test_ecg_windows_centre_ventricular_beats() -> None:
    """Record 119 (ventricular bigeminy): wide V beats are found and labelled too (their R fiducial, on the
    downstroke, sits some 50 ms from the annotation)."""
    ws = list(ecg_windows("119", start_ns=0))
    rec = mitdb.load_record("119")
    labels = [w.label for w in ws]
    assert np.mean([lab is not None for lab in labels]) >= 0.99
    n_v = int(np.sum(rec.aami == "V"))
    assert abs(labels.count("V") - n_v) <= 0.01 * n_v


def test_ecg_windows_survive_the_wire() -> None:
    ws = ecg100()[:300]
    assert all(decode_window(encode_window(w)) == w for w in ws)


def test_ecg_windows_chunking_does_not_change_windows() -> None:
    a = list(itertools.islice(ecg_windows("100", start_ns=0, chunk_s=1.0), 200))
    b = list(itertools.islice(ecg_windows("100", start_ns=0, chunk_s=0.37), 200))
    assert a == b


@functools.cache
def recording(file_id: int) -> cwru.CwruRecording:
    try:
        return next(r for r in cwru.list_recordings(read_rpms=False) if r.file_id == file_id)
    except FileNotFoundError as e:
        pytest.skip(f"CWRU data not available: {e}")


def test_vibration_windows_shapes_and_labels() -> None:
    rec = recording(106)  # inner race 0.007", load 1
    sig = cwru.load_signal(rec)
    ws = list(vibration_windows(rec, start_ns=START_NS))
    assert len(ws) == (sig.size - cwru.FRAME) // cwru.FRAME + 1
    assert all(w.samples.shape == (cwru.FRAME,) and w.samples.dtype == np.float32 for w in ws)
    assert {w.label for w in ws} == {"inner"} and {w.stream for w in ws} == {"cwru-106"}
    assert {w.modality for w in ws} == {"vibration"} and {w.fs for w in ws} == {12000.0}
    assert [w.seq for w in ws] == list(range(len(ws)))
    np.testing.assert_array_equal(ws[3].samples, sig[3 * cwru.FRAME : 4 * cwru.FRAME])
    assert ws[3].t0_ns - START_NS == round(3 * cwru.FRAME * 1e9 / cwru.FS)
    assert ws[0].meta["fault"] == "inner" and ws[0].meta["load_hp"] == "1"
    half = list(itertools.islice(vibration_windows(106, hop=cwru.FRAME // 2, start_ns=0), 5))
    np.testing.assert_array_equal(half[1].samples, sig[512 : 512 + 1024])
    assert decode_window(encode_window(half[1])) == half[1]


def test_vibration_windows_normal_and_by_name() -> None:
    rec = recording(97)  # normal baseline, resampled 48 -> 12 kHz by the loader
    ws = list(vibration_windows(rec.name, start_ns=0))
    assert ws and {w.label for w in ws} == {"normal"} and ws[0].stream == "cwru-97"
    with pytest.raises(ValueError, match="no CWRU recording"):
        next(vibration_windows("no-such-file"))


def test_replayer_rejects_missing_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCI_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ValueError, match="SCI_KAFKA_BOOTSTRAP"):
        Replayer(None)
    with pytest.raises(ValueError, match="speed must be >= 0"):
        Replayer("127.0.0.1:9", speed=-1)


# ------------------------------------------------------------------------------------------------------------
# integration: a real broker


def _create_topic(bootstrap: str, partitions: int, topic: str | None = None) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = topic or f"test.replay.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-replay")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    return topic


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """All records of ``topic`` (every partition from the beginning, no consumer group) until ``expected``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            time.sleep(0 if parts else 0.1)
        assert parts, f"topic {topic} has no partitions"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        end = time.monotonic() + 1.0  # nothing more than expected arrives
        while time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.mark.integration
def _three_streams() -> list:
    return [ecg_windows("100", start_ns=START_NS), ecg_windows("119", start_ns=START_NS),
            vibration_windows(recording(106), start_ns=START_NS)]


def test_replay_round_trip_through_broker(local_stack) -> None:
    bootstrap = local_stack.settings.kafka_bootstrap
    topic = _create_topic(bootstrap, partitions=3)
    streams = _three_streams()
    replayer = Replayer(bootstrap, topic, speed=0, progress=True)
    summary = replayer.run(streams, max_windows=300)
    print(summary)
    assert replayer.sent_so_far == replayer.produced_so_far == 300
    assert summary.sent == summary.produced == 300 and summary.failed == 0
    assert sum(summary.per_stream.values()) == 300 and set(summary.per_stream) == {
        "mitdb-100",
        "mitdb-119",
        "cwru-106",
    }

    records = _consume(bootstrap, topic, 300)
    assert len(records) == 300
    windows = [decode_window(r.value) for r in records]
    keys = [r.key for r in records]
    assert len(set(keys)) == 300
    assert keys == [w.key for w in windows]
    got = {s: sum(w.stream == s for w in windows) for s in summary.per_stream}
    assert got == summary.per_stream
    assert sum(w.label is not None for w in windows) == summary.labelled
    # exactly the first 300 windows of the streams merged by t0_ns, each stream without gaps
    again = _three_streams()
    expected = list(itertools.islice(heapq.merge(*again, key=lambda w: w.t0_ns), 300))
    assert sorted(w.key for w in windows) == sorted(w.key for w in expected)
    for s in summary.per_stream:
        assert sorted(w.seq for w in windows if w.stream == s) == list(range(summary.per_stream[s]))
    # the replay produced in t0 order: within each partition offsets follow t0
    for p in {r.partition for r in records}:
        t0 = [w.t0_ns for r, w in zip(records, windows, strict=True) if r.partition == p]
        assert t0 == sorted(t0)


@pytest.mark.integration
def test_replay_pacing_and_raw_payloads(local_stack) -> None:
    bootstrap = local_stack.settings.kafka_bootstrap
    topic = _create_topic(bootstrap, partitions=1)
    frames = vibration_windows(recording(106), start_ns=0)  # 85.3 ms apart
    t = time.monotonic()
    summary = Replayer(bootstrap, topic, speed=20.0, progress=False).run([frames], max_windows=25)
    # paced: 24 intervals of 1024/12000 s at 20x real time take at least ~0.1 s (sleep only lengthens)
    assert time.monotonic() - t >= 24 * cwru.FRAME / cwru.FS / 20.0
    assert summary.produced == 25
    bad = [b"", b"NOPE" + bytes(20), encode_window(next(vibration_windows(recording(106), start_ns=0)))[:-3]]
    assert publish_raw(bootstrap, topic, bad, keys=[b"bad:0", None, b"bad:2"]) == 3
    records = _consume(bootstrap, topic, 28)
    assert len(records) == 28
    reasons = []
    for r in records[25:]:
        with pytest.raises(ContractError) as info:
            decode_window(r.value)
        reasons.append(info.value.reason)
    assert reasons[0].startswith("truncated: 0 bytes")
    assert reasons[1].startswith("bad magic")
    assert reasons[2].startswith("n mismatch")
    assert [r.key for r in records[25:]] == [b"bad:0", None, b"bad:2"]


@pytest.mark.integration
def test_replay_command_uses_settings(local_stack) -> None:
    settings = dataclasses.replace(local_stack.settings, topic_prefix=f"rt{uuid.uuid4().hex[:8]}")
    _create_topic(settings.kafka_bootstrap, 1, settings.topics["windows"])
    summary = replay_command(settings, "cwru", records=[106, "12k_Drive_End_B007_3_121"], speed=0,
                             max_windows=40, progress=False)  # fmt: skip
    assert summary.produced == 40 and set(summary.per_stream) == {"cwru-106", "cwru-121"}
    assert summary.labels == {"inner": summary.per_stream["cwru-106"], "ball": summary.per_stream["cwru-121"]}
    windows = [decode_window(r.value) for r in _consume(settings.kafka_bootstrap, settings.topics["windows"], 40)]
    assert len(windows) == 40 and {w.label for w in windows} == {"inner", "ball"}
    with pytest.raises(ValueError, match="dataset must be"):
        replay_command(settings, "eeg")


@pytest.mark.integration
def test_replay_command_streams_a_users_own_files(local_stack, tmp_path) -> None:
    """`replay --files`: an ECG array from a 250 Hz device and a 48 kHz CWRU .mat, resampled, on the real broker."""
    from models.data.recording import resample

    settings = dataclasses.replace(local_stack.settings, topic_prefix=f"rf{uuid.uuid4().hex[:8]}")
    _create_topic(settings.kafka_bootstrap, 1, settings.topics["windows"])
    np.save(tmp_path / "patch 7.npy", resample(rec100().signal[: 60 * mitdb.FS], mitdb.FS, 250))
    summary = replay_command(settings, files=[tmp_path / "patch 7.npy"], modality="ecg", fs=250, lead="MLII",
                             speed=0, progress=False)
    windows = [decode_window(r.value) for r in _consume(settings.kafka_bootstrap, settings.topics["windows"],
                                                        summary.produced)]
    assert summary.ok and summary.per_stream == {"ecg-patch_7": summary.produced} and 60 <= summary.produced <= 80
    assert {(w.lead, w.fs, w.meta["source_fs"], w.label) for w in windows} == {("MLII", 360.0, "250", None)}
    assert sorted(w.seq for w in windows) == list(range(summary.produced))
    normal = next(r for r in cwru.list_recordings(read_rpms=False) if r.file_id == 97).path
    summary = replay_command(settings, files=[normal], modality="vibration", fs=48000, speed=0, max_windows=30,
                             progress=False)
    assert summary.ok and summary.per_stream == {"vibration-normal_0_97": 30} and summary.labelled == 0
    with pytest.raises(ValueError, match="does not say its sampling rate"):
        replay_command(settings, files=[tmp_path / "patch 7.npy"], modality="ecg")
    with pytest.raises(ValueError, match=r"either a dataset .* or files"):
        replay_command(settings, "mitdb", files=[tmp_path / "patch 7.npy"], modality="ecg", fs=250)


# ------------------------------------------------------------------------------------------------------------
# faults: failed sends are reported, a broker restart gets a new producer session


@pytest.mark.integration
def test_failed_sends_are_counted_and_make_the_summary_not_ok(local_stack) -> None:
    bootstrap = local_stack.settings.kafka_bootstrap
    topic = _create_topic(bootstrap, partitions=1)
    frames = vibration_windows(recording(106), start_ns=0)  # 4 KB each: over this producer's request limit
    summary = Replayer(bootstrap, topic, speed=0, progress=False, producer_config={"max_request_size": 1000}).run(
        [frames], max_windows=5)
    assert (summary.sent, summary.produced, summary.failed, summary.ok) == (5, 0, 5, False)
    assert summary.new_sessions == 0 and "MessageSizeTooLarge" in summary.errors[0]
    assert "5 failed" in str(summary) and "MessageSizeTooLarge" in str(summary)


def test_cli_replay_exits_non_zero_when_a_send_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.replay
    from sci_monitor.cli import main
    from streams.replay import ReplaySummary

    def fake(settings, **kwargs) -> ReplaySummary:
        return ReplaySummary("sci.windows", produced=3, sent=5, failed=2, errors=["KafkaTimeoutError: x"])

    monkeypatch.setattr(streams.replay, "replay_command", fake)
    assert main(["replay", "--dataset", "cwru", "--no-progress"]) == 1
    monkeypatch.setattr(streams.replay, "replay_command", lambda settings, **kw: ReplaySummary("t", 5, 5))
    assert main(["replay", "--dataset", "cwru", "--no-progress"]) == 0


def _slowly(windows, seconds: float):
    for w in windows:
        time.sleep(seconds)
        yield w


@pytest.mark.integration
def test_replay_survives_a_broker_restart_with_a_new_producer_session(private_stack, caplog) -> None:
    import threading

    from streams.stack import _pid_alive

    bootstrap = private_stack.settings.kafka_bootstrap
    topic = private_stack.settings.topics["windows"]  # re-created by up() after the restart
    n = 400
    replayer = Replayer(bootstrap, topic, speed=0, progress=False, max_sessions=5)
    paced = _slowly(vibration_windows(recording(106), hop=256, start_ns=0), 0.015)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=replayer.run([paced], max_windows=n)))
    with caplog.at_level("WARNING", logger="sci_monitor.replay"):
        thread.start()
        while replayer.produced_so_far < 60:
            time.sleep(0.05)
        pid = private_stack.kafka.read_pid()
        os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.05)
        private_stack.up(timeout=30)  # a new broker: memory storage, so topics and producer ids are gone
        sent_after_restart = replayer.sent_so_far
        thread.join(timeout=180)
    summary = result["summary"]
    assert summary.ok and summary.failed == 0 and summary.sent == n, str(summary)
    assert summary.new_sessions >= 1
    assert any("new session 1 of at most 5" in r.getMessage() for r in caplog.records)
    # everything sent after the restart (and what the old session could not land) is in the new broker
    seqs = {decode_window(r.value).seq for r in _consume(bootstrap, topic, n - sent_after_restart)}
    assert set(range(sent_after_restart, n)) <= seqs, sorted(set(range(sent_after_restart, n)) - seqs)[:10]


def _copy_records(tmp_path, names, drop_mlii=()):
    """A data root with copies of MIT-BIH records; in ``drop_mlii`` the header's MLII lead is renamed V1."""
    src = mitdb.record_path("100").parent
    dst = tmp_path / "mitdb"
    dst.mkdir()
    for name in names:
        for ext in (".dat", ".atr"):
            (dst / f"{name}{ext}").symlink_to(src / f"{name}{ext}")
        hea = (src / f"{name}.hea").read_text()
        (dst / f"{name}.hea").write_text(hea.replace(" MLII", " V1") if name in drop_mlii else hea)
    return tmp_path


def test_record_without_mlii_streams_with_its_own_lead(tmp_path) -> None:
    rec100()  # skips without data
    root = _copy_records(tmp_path, ("100", "119"), drop_mlii=("100",))
    with pytest.raises(ValueError, match="no MLII lead"):
        mitdb.load_record("100", root)
    from streams.modalities import replay_datasets

    streams = [replay_datasets()["mitdb"].replay_windows(r, start_ns=0, root=root) for r in ("100", "119")]
    merged = list(itertools.islice(heapq.merge(*streams, key=lambda w: w.t0_ns), 400))
    leads = {w.stream: w.lead for w in merged}
    assert leads == {w.stream: w.meta["lead"] for w in merged}
    assert leads == {"mitdb-100": "V1", "mitdb-119": "MLII"}
    # the first lead of the copy is the signal that was MLII: same windows, same RR, another lead name
    original = ecg100()[:50]
    renamed = [w for w in merged if w.stream == "mitdb-100"][:50]
    assert [w.meta["sample"] for w in renamed] == [w.meta["sample"] for w in original]
    assert all(np.array_equal(a.samples, b.samples) and a.features == b.features
               for a, b in zip(renamed, original, strict=True))
