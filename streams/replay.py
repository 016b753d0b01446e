"""Publish real recordings as live sensor streams on Kafka (topic ``sci.windows``).

- :func:`beat_windows`: an ECG lead at 360 Hz streamed through :class:`~streams.rpeaks.StreamingRPeakDetector` in
  ~1 s chunks; one window of ``BEFORE + AFTER = 256`` samples of the raw lead (mV) per detected beat, with the
  detected beat's R fiducial (:mod:`models.data.fiducial`, as offline) at index ``BEFORE = 96``, and the per-stream
  beat features (RR of :func:`models.data.rr.rr_features` on the detected peaks, morphology against the stream's
  running template of :func:`models.data.morph.morph_features`; the same functions as the offline data). A beat is
  emitted when the next beat has been detected (its post-RR is then known; the last beat of the record at the end,
  with post-RR := pre-RR). Ground truth: the AAMI class of the reference annotation whose R fiducial lies within
  50 ms of the detected peak (None when there is none or it is Q).
  :func:`ecg_windows` streams an MIT-BIH record this way (MLII when the record has it, else its first lead, named
  in ``meta["lead"]``).
- :func:`frame_windows`: an accelerometer signal at 12 kHz cut into ``FRAME = 1024``-sample frames;
  :func:`vibration_windows` streams a CWRU recording this way.
- :func:`ecg_file_windows`, :func:`vibration_file_windows`: a user's own recording (WFDB, EDF, .mat, .npy, .csv,
  any rate; :mod:`models.data.recording`) converted to the model's units and resampled to its rate, then streamed as
  above (``sci-monitor replay --files``).
- :class:`Replayer`: merges many streams by ``t0_ns`` (``heapq.merge``), paces them by the wall clock
  (``speed`` × real time, 0 = as fast as possible) and produces them with kafka-python (key = window key).

Replay time: a replay never stamps a window in the future. Every replay has an id, its start time
(:func:`replay_id`, e.g. ``20261122T053300.123Z``); window i of the merged streams, at recording offset
``offset_ns`` from the first window, is stamped ``t0_ns = start + offset_ns / speed`` (paced) or ``start + i µs``
(speed 0) and published no earlier than that (the pacing sleeps until it), and carries ``meta["replay_id"]`` and
``meta["offset_ns"]`` (the recording's own time base). Re-running the same replay with the same id (``--replay-id``)
gives every window the same stamp again, so the stored points are overwritten, not added.

Throughput (2-core dev machine, tansu broker, speed 0): ECG windows are generated at ~3.4k windows/s (the
R-peak detector dominates); producing is bound by kafka-python's record-batch CRC32C, which is pure Python
unless the ``crc32c`` package is installed (measured: 1.7k vs 11.8k CWRU frames/s, 1.5k vs 2.2k mixed
ECG+CWRU windows/s end to end).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.data import cwru, mitdb
from models.data.fiducial import r_fiducial
from models.data.morph import TEMPLATE_BEATS, morph_features, running_template
from models.data.recording import Recording, finite_runs, read_recording, resample, to_unit
from models.data.rr import rr_features
from streams.contracts import MAX_STREAM_CHARS, SensorWindow, encode_window, window_key
from streams.rpeaks import StreamingRPeakDetector

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "LABEL_TOLERANCE_S",
    "ReplaySummary",
    "Replayer",
    "beat_windows",
    "ecg_file_windows",
    "ecg_windows",
    "file_stream",
    "frame_windows",
    "publish_raw",
    "replay_command",
    "vibration_file_windows",
    "vibration_windows",
]

log = logging.getLogger("sci_monitor.replay")

LABEL_TOLERANCE_S = 0.050  # detected peak <-> R fiducial of the reference annotation, for the ground-truth label
CHUNK_S = 1.0
VIBRATION_LEAD = "DE"  # CWRU drive-end accelerometer


def _ns(start_ns: int, samples: np.ndarray | int, fs: float) -> np.ndarray:
    """UTC ns of sample offsets (int64), exact to the ns for integer fs."""
    off = np.asarray(samples, dtype=np.int64)
    if float(fs).is_integer():
        return start_ns + (off * 1_000_000_000 + int(fs) // 2) // int(fs)
    return start_ns + np.rint(off * (1e9 / fs)).astype(np.int64)


def _reference_labels(peaks: np.ndarray, ref: np.ndarray, aami: np.ndarray, tol: int) -> list[str | None]:
    """AAMI class of the nearest reference beat within ``tol`` samples of each peak (None if none or Q); ``ref``
    int64[n] sorted reference positions, ``aami`` str[n] their classes."""
    if ref.size == 0 or peaks.size == 0:
        return [None] * int(peaks.size)
    j = np.searchsorted(ref, peaks)
    lo, hi = np.clip(j - 1, 0, ref.size - 1), np.clip(j, 0, ref.size - 1)
    nearest = np.where(np.abs(ref[lo] - peaks) <= np.abs(ref[hi] - peaks), lo, hi)
    ok = np.abs(ref[nearest] - peaks) <= tol
    return [str(a) if k and a != "Q" else None for a, k in zip(aami[nearest].tolist(), ok.tolist(), strict=True)]


def ecg_windows(
    record_name: str | int,
    root: str | Path | None = None,
    start_ns: int | None = None,
    chunk_s: float = CHUNK_S,
) -> Iterator[SensorWindow]:
    """Beat windows of MIT-BIH record ``record_name`` as they become available in a live stream
    (:func:`beat_windows` of its MLII lead, or of its first lead when it has no MLII), stream ``"mitdb-<record>"``,
    labelled with the reference annotations."""
    rec = mitdb.load_record(record_name, root, lead=None)
    meta = {"source": "mitdb", "record": rec.name, "lead": rec.lead}
    return beat_windows(rec.signal, lead=rec.lead, stream=f"mitdb-{rec.name}", meta=meta,
                        reference=(rec.beat_samples, rec.aami), start_ns=start_ns, chunk_s=chunk_s)


def beat_windows(
    signal: np.ndarray,
    *,
    lead: str,
    stream: str,
    meta: dict[str, str],
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    start_ns: int | None = None,
    chunk_s: float = CHUNK_S,
    seq0: int = 0,
) -> Iterator[SensorWindow]:
    """Beat windows of one ECG lead ``signal`` float32[L] in mV at 360 Hz as they become available in a live
    stream: the signal goes through :class:`~streams.rpeaks.StreamingRPeakDetector` in ``chunk_s`` chunks.

    Each window: ``samples`` float32[256] of the raw lead around the detected beat, with its R fiducial
    (:mod:`models.data.fiducial`, as offline) at index 96; ``features["beat"]`` = the per-stream beat features
    (:data:`models.data.mitdb.BEAT_AUX` numbers): RR features of :func:`models.data.rr.rr_features` on the peaks
    detected so far, then :func:`models.data.morph.morph_features` and :func:`models.data.morph.running_template`
    over the stream's windows so far; ``t0_ns = start_ns + (peak − 96)·1e9/360`` (``start_ns`` defaults to now),
    ``seq`` from ``seq0``, ``meta`` plus ``lead``, ``peak_index`` and ``sample``. Beats whose window would cross the
    signal's start or end are skipped. ``reference``: annotated beat positions int64[n] (samples at 360 Hz) and
    their AAMI classes str[n]; a window's label is the class of the annotation whose R fiducial lies within 50 ms
    of its detected peak (None when there is none, it is Q, or there is no reference).
    """
    fs = float(mitdb.FS)
    sig = np.asarray(signal, dtype=np.float32).ravel()
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    meta_base = {**meta, "lead": lead, "peak_index": str(mitdb.BEFORE)}
    tol = round(LABEL_TOLERANCE_S * fs)
    # ground truth: the annotated beats at their R fiducials, the point the detected peaks are refined to as well
    # (an annotation may sit tens of ms from it: on wide ventricular beats the slope-energy peak is on the downstroke)
    if reference is None:
        ref, ref_aami = np.zeros(0, np.int64), np.zeros(0, "<U1")
    else:
        ref = r_fiducial(sig, reference[0], fs)
        order = np.argsort(ref, kind="stable")
        ref, ref_aami = ref[order], np.asarray(reference[1])[order]
    if sig.size < mitdb.WINDOW:
        return
    windows = sliding_window_view(sig, mitdb.WINDOW)
    det = StreamingRPeakDetector(fs)
    step = max(1, round(chunk_s * fs))
    peaks = np.zeros(0, np.int64)
    emitted = 0  # beats (detected peaks) already handled
    history = np.zeros((0, mitdb.WINDOW), np.float32)  # the stream's last windows, for the running template
    seq = seq0
    for start in [*range(0, sig.size, step), None]:
        final = start is None
        new = det.flush() if final else det.push(sig[start : start + step])
        if new.size:
            peaks = np.concatenate((peaks, new))
        ready = peaks.size if final else peaks.size - 1  # beats whose successor is known
        if ready <= emitted:
            continue
        idx = np.arange(emitted, ready)
        p = peaks[idx]
        rr = rr_features(peaks, fs)[idx]
        labels = _reference_labels(p, ref, ref_aami, tol)
        t0 = _ns(start_ns, p - mitdb.BEFORE, fs)
        inside = np.flatnonzero((p - mitdb.BEFORE >= 0) & (p + mitdb.AFTER <= sig.size) & np.isfinite(rr).all(axis=1))
        x_new = windows[p[inside] - mitdb.BEFORE]
        morph, template = morph_features(x_new, history), running_template(x_new, history)
        history = np.concatenate((history, x_new))[-(TEMPLATE_BEATS - 1) :]
        for n, k in enumerate(inside.tolist()):
            yield SensorWindow(
                stream=stream,
                modality="ecg",
                lead=lead,
                fs=fs,
                t0_ns=int(t0[k]),
                seq=seq,
                samples=x_new[n],
                label=labels[k],
                features={"beat": [*rr[k].tolist(), *morph[n].tolist(), *template[n].tolist()]},
                meta={**meta_base, "sample": str(int(p[k]))},
            )
            seq += 1
        emitted = ready


def _find_recording(recording: cwru.CwruRecording | str | int, root: str | Path | None) -> cwru.CwruRecording:
    if isinstance(recording, cwru.CwruRecording):
        return recording
    for rec in cwru.list_recordings(root, read_rpms=False):
        if str(recording) in (rec.name, str(rec.file_id)):
            return rec
    raise ValueError(f"no CWRU recording named or numbered {recording!r} under the data directory")


def vibration_windows(
    recording: cwru.CwruRecording | str | int,
    hop: int = cwru.FRAME,
    start_ns: int | None = None,
    root: str | Path | None = None,
) -> Iterator[SensorWindow]:
    """Frames of a CWRU recording (object, file stem or file id): :func:`frame_windows` of its drive-end
    acceleration, stream ``"cwru-<file_id>"``, ``label`` = its fault class (``cwru.CLASSES``)."""
    if hop < 1:
        raise ValueError(f"hop must be >= 1 sample, got {hop}")
    rec = _find_recording(recording, root)
    meta = {
        "source": "cwru",
        "recording": rec.name,
        "fault": rec.fault,
        "load_hp": str(rec.load_hp),
        "size_inch": "" if rec.size_inch is None else f"{rec.size_inch:.3f}",
    }
    return frame_windows(cwru.load_signal(rec), stream=f"cwru-{rec.file_id}", meta=meta, label=rec.fault, hop=hop,
                         start_ns=start_ns)


def frame_windows(
    signal: np.ndarray,
    *,
    stream: str,
    meta: dict[str, str],
    label: str | None = None,
    hop: int = cwru.FRAME,
    start_ns: int | None = None,
    lead: str = VIBRATION_LEAD,
    seq0: int = 0,
) -> Iterator[SensorWindow]:
    """Frames of one accelerometer ``signal`` float32[L] in g at 12 kHz: ``samples`` float32[1024], one every
    ``hop`` samples, of sensor ``lead``, ``t0_ns = start_ns + offset·1e9/12000`` (``start_ns`` defaults to now),
    ``seq`` from ``seq0``, ``meta`` plus the frame's ``offset`` (samples)."""
    if hop < 1:
        raise ValueError(f"hop must be >= 1 sample, got {hop}")
    sig = np.asarray(signal, dtype=np.float32).ravel()
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    if sig.size < cwru.FRAME:
        return
    frames = sliding_window_view(sig, cwru.FRAME)[::hop]
    offsets = np.arange(frames.shape[0], dtype=np.int64) * hop
    t0 = _ns(start_ns, offsets, cwru.FS)
    for i in range(frames.shape[0]):
        yield SensorWindow(
            stream=stream,
            modality="vibration",
            lead=lead,
            fs=float(cwru.FS),
            t0_ns=int(t0[i]),
            seq=seq0 + i,
            samples=frames[i],
            label=label,
            features={},
            meta={**meta, "offset": str(int(offsets[i]))},
        )


# ------------------------------------------------------------------------------------------------------------
# a user's own recordings (any format of models.data.recording, any rate): resampled to the model's rate


def file_stream(modality: str, path: str | Path) -> str:
    """The stream name of a replayed file: ``<modality>-<file stem>``, other characters replaced by ``_``.

    >>> file_stream("ecg", "/data/incart/I01.hea"), file_stream("vibration", "run 3 (bearing).mat")
    ('ecg-I01', 'vibration-run_3__bearing_')
    """
    return re.sub(r"[^A-Za-z0-9_.:/@-]", "_", f"{modality}-{Path(path).stem}")[:MAX_STREAM_CHARS]


def _file_meta(rec: Recording, path: str | Path) -> dict[str, str]:
    return {"source": "file", "file": Path(path).name, "channel": rec.channel, "source_fs": f"{rec.fs:g}"}


@dataclass(frozen=True)
class _Part:
    """One gap-free part of a recording: its place ``run`` (samples at the source rate), its samples resampled to
    the model's rate, and the time its first sample was recorded (ns)."""

    index: int
    run: slice
    signal: np.ndarray
    start_ns: int


def _parts(rec: Recording, unit: str, fs: float, start_ns: int | None) -> list[_Part]:
    """The gap-free parts of ``rec`` (:func:`models.data.recording.finite_runs`), each converted to ``unit`` and
    resampled to ``fs`` Hz on its own (a gap must not leak into the filter), clocked from ``start_ns`` (default:
    now) plus its offset in the recording."""
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    runs = finite_runs(rec.signal)
    if len(runs) > 1:
        missing = (rec.signal.size - sum(r.stop - r.start for r in runs)) / rec.fs
        log.warning("%s, channel %s: %d parts between gaps (%.3g s without samples), each streamed as a "
                    "recording's start", rec.name, rec.channel, len(runs), missing)
    return [_Part(k, run, resample(to_unit(rec.signal[run], rec.unit, unit), rec.fs, fs),
                  start_ns + round(run.start * 1e9 / rec.fs)) for k, run in enumerate(runs)]


def _stream_parts(parts: list[_Part], windows_of: Callable[[_Part, int], Iterator[SensorWindow]]
                  ) -> Iterator[SensorWindow]:
    """Chain ``windows_of(part, seq0)`` over the parts; ``seq`` continues from one part to the next."""
    seq = 0
    for part in parts:
        for w in windows_of(part, seq):
            seq = w.seq + 1
            yield w


def ecg_file_windows(path: str | Path, *, start_ns: int | None = None, fs: float | None = None,
                     channel: str | None = None, lead: str | None = None, unit: str | None = None,
                     chunk_s: float = CHUNK_S) -> Iterator[SensorWindow]:
    """Beat windows (:func:`beat_windows`) of an ECG recording file (:func:`models.data.recording.read_recording`:
    WFDB, EDF, .mat, .npy, .csv), stream :func:`file_stream`. The file is read when this is called, before any
    window is made.

    ``channel``: the lead to stream (default: MLII, else II, else the file's only channel); ``lead``: the lead
    announced in the windows (default: the channel's name; an array's columns are numbered, not named, so its lead
    is "0", "1", ..., which no model serves until ``lead`` names it). The lead is converted to mV (from the WFDB or
    EDF header's unit; other files from ``unit``, default mV) and resampled from its own rate (``fs`` Hz for files
    that do not say it) to 360 Hz. A WFDB record's beat annotations, mapped to AAMI classes and moved to 360 Hz,
    label the windows.

    Gaps (NaN or invalid samples): each part between them is streamed as the start of a recording is, with its
    own R-peak detector, RR average and template warm-up (an interval across a gap is not an RR interval), at its
    own time, in the same stream, ``seq`` continuing; ``meta["segment"]`` numbers the parts from 0.
    """
    rec = read_recording(path, fs=fs, channel=channel, unit=unit, preferred=(mitdb.LEAD, "II"))
    meta = _file_meta(rec, path)
    if rec.beats is not None:
        samples, symbols = rec.beats
        is_beat = np.isin(symbols, list(mitdb.SYMBOL_TO_AAMI))
        ann, aami = samples[is_beat], np.asarray([mitdb.SYMBOL_TO_AAMI[c] for c in symbols[is_beat]], dtype="<U1")

    def windows_of(part: _Part, seq0: int) -> Iterator[SensorWindow]:
        reference = None
        if rec.beats is not None:
            inside = (ann >= part.run.start) & (ann < part.run.stop)
            at = np.rint((ann[inside] - part.run.start) * (mitdb.FS / rec.fs)).astype(np.int64)
            reference = (np.clip(at, 0, max(part.signal.size - 1, 0)), aami[inside])
        return beat_windows(part.signal, lead=lead or rec.channel, stream=file_stream("ecg", path),
                            meta={**meta, "segment": str(part.index)}, reference=reference, start_ns=part.start_ns,
                            chunk_s=chunk_s, seq0=seq0)

    return _stream_parts(_parts(rec, "mV", mitdb.FS, start_ns), windows_of)


def vibration_file_windows(path: str | Path, *, start_ns: int | None = None, fs: float | None = None,
                           channel: str | None = None, lead: str | None = None, unit: str | None = None,
                           hop: int = cwru.FRAME) -> Iterator[SensorWindow]:
    """Frames (:func:`frame_windows`) of a vibration recording file (:func:`models.data.recording.read_recording`),
    stream :func:`file_stream`, unlabelled, read when this is called. ``channel``: default the drive-end one (a
    name ending in ``DE_time``, as CWRU names them), else the file's only channel; in g (from the WFDB or EDF
    header's unit; other files from ``unit``, default g), resampled from its own rate (``fs`` Hz) to 12 kHz.
    ``lead``: the sensor announced (default: ``DE`` / ``FE`` / ``BA`` for CWRU's ``*_DE_time`` / ``*_FE_time`` /
    ``*_BA_time`` variables, else the channel's name).
    Gaps: as :func:`ecg_file_windows` (no frame spans one)."""
    rec = read_recording(path, fs=fs, channel=channel, unit=unit, preferred=("DE_time",))
    cwru_sensor = re.fullmatch(r".*_(DE|FE|BA)_time", rec.channel)
    meta = _file_meta(rec, path)

    def windows_of(part: _Part, seq0: int) -> Iterator[SensorWindow]:
        return frame_windows(part.signal, stream=file_stream("vibration", path),
                             meta={**meta, "segment": str(part.index)}, hop=hop, start_ns=part.start_ns,
                             lead=lead or (cwru_sensor[1] if cwru_sensor else rec.channel), seq0=seq0)

    return _stream_parts(_parts(rec, "g", cwru.FS, start_ns), windows_of)


# ------------------------------------------------------------------------------------------------------------
# Kafka


def _bootstrap(bootstrap: str | None) -> str:
    value = bootstrap or os.environ.get("SCI_KAFKA_BOOTSTRAP")
    if not value:
        raise ValueError("no Kafka bootstrap servers: pass bootstrap='host:port' or set SCI_KAFKA_BOOTSTRAP")
    return value


def _producer(bootstrap: str, **overrides):
    """kafka-python producer (acks=all, batching); RuntimeError naming the fix when no broker answers."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    config = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "retries": 5,
        "client_id": "sci-monitor-replay",
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as e:
        raise RuntimeError(
            f"no Kafka broker answers at {bootstrap} ({e}); start one with `sci-monitor stack up` "
            "or set SCI_KAFKA_BOOTSTRAP"
        ) from e


def _needs_new_session(exc: BaseException) -> bool:
    """A send failure that a new producer session may get past: any Kafka error except those that would fail
    again for the same record or configuration (too large, invalid topic, not authorised, unsupported).

    A broker restart forgets producer ids: kafka-python's idempotent producer then fails with
    ``UnknownProducerIdError`` or aborts every batch after a fatal ``InitProducerId`` error, and only a new
    producer gets past it (seen with tansu 0.6.0 and kafka-python 3.0.12).
    """
    from kafka import errors

    permanent = (errors.MessageSizeTooLargeError, errors.RecordListTooLargeError, errors.InvalidTopicError,
                 errors.AuthorizationError, errors.TopicAuthorizationFailedError,
                 errors.ClusterAuthorizationFailedError, errors.KafkaConfigurationError,
                 errors.UnsupportedVersionError, errors.UnsupportedCodecError,
                 errors.UnsupportedForMessageFormatError)
    return isinstance(exc, errors.KafkaError) and not isinstance(exc, permanent)


class _Sender:
    """Sends records through one producer session at a time.

    A record whose send fails with a session error (:func:`_needs_new_session`) is kept; before the next send
    (and at :meth:`finish`) the old session is closed, a new producer is made and the kept records are sent
    again, with a log line each time. At most ``max_sessions`` new sessions, ``backoff_s`` doubling between
    them; what still fails after that, or fails for another reason (too large, not authorised), is counted in
    ``failed`` with its error. Resent records may be duplicated in the topic (at-least-once; the worker's
    outputs are idempotent).
    """

    def __init__(self, make_producer, topic: str, on_ok, max_sessions: int = 5, backoff_s: float = 1.0,
                 close_timeout_s: float = 30.0) -> None:
        self._make, self.topic, self._on_ok = make_producer, topic, on_ok
        self.max_sessions, self.backoff_s, self.close_timeout_s = max_sessions, backoff_s, close_timeout_s
        self._lock = threading.Lock()
        self._kept: list[tuple[bytes | None, bytes]] = []
        self._last_error = ""
        self.new_sessions = 0
        self.failed = 0
        self.errors: list[str] = []
        self.producer = make_producer()

    def send(self, key: bytes | None, value: bytes) -> None:
        if self._kept:
            self._renew()
        self._send(key, value)

    def _send(self, key: bytes | None, value: bytes) -> None:
        try:
            fut = self.producer.send(self.topic, key=key, value=value)
        except Exception as exc:  # raised at once, e.g. no metadata within max_block_ms while the broker is away
            self._error(key, value, exc)
            return
        fut.add_callback(self._on_ok)
        fut.add_errback(lambda exc: self._error(key, value, exc))

    def _error(self, key: bytes | None, value: bytes, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if _needs_new_session(exc) and self.new_sessions < self.max_sessions:
                self._kept.append((key, value))
                self._last_error = text
                return
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(text)

    def _renew(self) -> None:
        """Close the failing session (its in-flight records fail or land first), then resend on a new one."""
        try:
            self.producer.close(timeout=self.close_timeout_s)
        except Exception as exc:
            log.warning("closing the failed producer session: %s: %s", type(exc).__name__, exc)
        while True:
            with self._lock:
                kept, self._kept = self._kept, []
            if not kept:
                return
            if self.new_sessions >= self.max_sessions:
                with self._lock:
                    self.failed += len(kept)
                    self.errors.append(f"{len(kept)} records still failing after {self.new_sessions} new producer "
                                       f"sessions: {self._last_error}")
                return
            self.new_sessions += 1
            delay = self.backoff_s * 2 ** (self.new_sessions - 1)
            log.warning("producer session failed (%s); %d records kept, new session %d of at most %d in %.1f s",
                        self._last_error, len(kept), self.new_sessions, self.max_sessions, delay)
            time.sleep(delay)
            try:
                self.producer = self._make()
            except Exception as exc:  # the broker is not back yet: the records wait for the next session
                with self._lock:
                    self._kept = kept + self._kept
                    self._last_error = f"{type(exc).__name__}: {exc}"
                continue
            for key, value in kept:
                self._send(key, value)
            return

    def finish(self, timeout_s: float) -> None:
        """Flush; resend what a failed session kept (bounded); close."""
        try:
            while True:
                try:
                    self.producer.flush(timeout=timeout_s)
                except Exception as exc:
                    log.warning("flush: %s: %s", type(exc).__name__, exc)
                if not self._kept:
                    return
                self._renew()
        finally:
            self.producer.close(timeout=timeout_s)


@dataclass
class ReplaySummary:
    """What a replay produced: acknowledged messages per stream, ground-truth coverage, throughput."""

    topic: str
    produced: int = 0  # acknowledged by the broker
    sent: int = 0  # handed to the producer
    failed: int = 0  # never acknowledged (after new producer sessions, see Replayer)
    per_stream: dict[str, int] = field(default_factory=dict)
    labelled: int = 0  # windows with a known ground-truth label
    labels: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    new_sessions: int = 0  # producer sessions started after a failed one (e.g. a broker restart)
    replay_id: str | None = None  # repeat it with the same stamps: Replayer(replay=...), `replay --replay-id`

    @property
    def windows_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Every window handed to the producer was acknowledged."""
        return self.failed == 0 and self.produced >= self.sent

    def __str__(self) -> str:
        streams = ", ".join(f"{k}={v}" for k, v in sorted(self.per_stream.items()))
        text = (
            f"replayed {self.produced}/{self.sent} windows to {self.topic} in {self.elapsed_s:.1f} s "
            f"({self.windows_per_s:.0f} windows/s), {self.failed} failed, {self.labelled} labelled; {streams}; "
            f"replay id {self.replay_id}"
        )
        if self.new_sessions:
            text += f"; {self.new_sessions} new producer session(s)"
        if self.errors:
            text += "; errors: " + " | ".join(self.errors[:3])
        return text


_REPLAY_ID_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def replay_id(start_ns: int) -> str:
    """The id of a replay started at ``start_ns`` (UTC, ms resolution); :func:`replay_start_ns` inverts it.

    >>> replay_id(1_763_789_580_123_000_000), replay_start_ns("20251122T053300.123Z")
    ('20251122T053300.123Z', 1763789580123000000)
    """
    return datetime.fromtimestamp(start_ns // 1_000_000 / 1000, UTC).strftime(_REPLAY_ID_FORMAT)[:-4] + "Z"


def replay_start_ns(rid: str) -> int:
    try:
        t = datetime.strptime(rid, _REPLAY_ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"bad replay id {rid!r}: expected a UTC stamp like 20261122T053300.123Z") from None
    return (int(t.timestamp()) * 1000 + t.microsecond // 1000) * 1_000_000


class Replayer:
    """Interleave streams by ``t0_ns`` and produce them to ``topic``, stamped as the module docstring says.

    ``speed``: 0 = as fast as possible, 1 = real time, 10 = ten times faster (paced on t0_ns relative to the
    first window). ``replay``: the id of an earlier replay to repeat with the same stamps (default: a new one,
    :attr:`replay_id` after :meth:`run`). ``progress``: show a rich progress bar (windows, windows/s). Extra
    kafka-python producer options (e.g. :func:`streams.security.kafka_client_config`) go in ``producer_config``. A
    failed producer session (e.g. after a broker restart) is replaced by a new one, at most ``max_sessions`` times.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        topic: str = "sci.windows",
        speed: float = 0.0,
        progress: bool = True,
        producer_config: dict | None = None,
        max_sessions: int = 5,
        replay: str | None = None,
    ):
        if speed < 0:
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible), got {speed}")
        self.start_ns = None if replay is None else replay_start_ns(replay)
        self.replay_id = replay
        self.bootstrap = _bootstrap(bootstrap)
        self.topic = topic
        self.speed = float(speed)
        self.progress = progress
        self.producer_config = dict(producer_config or {})
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self.sent_so_far = 0  # live counters of the current run (read from other threads, e.g. the demo)
        self.produced_so_far = 0

    def run(
        self,
        streams: Iterable[Iterable[SensorWindow]],
        max_windows: int | None = None,
        timeout_s: float = 60.0,
    ) -> ReplaySummary:
        """Produce the merged streams (at most ``max_windows``), flush, and return the summary.

        Raises ``RuntimeError`` when the broker cannot be reached at the start; failed sends are counted in the
        summary (``summary.ok`` is False when any failed).
        """
        summary = ReplaySummary(topic=self.topic)
        per_stream: Counter[str] = Counter()
        labels: Counter[str] = Counter()

        self.sent_so_far = self.produced_so_far = 0

        def ok(_meta) -> None:
            with self._lock:
                summary.produced += 1
                self.produced_so_far = summary.produced

        sender = _Sender(lambda: _producer(self.bootstrap, **self.producer_config), self.topic, ok,
                         max_sessions=self.max_sessions, close_timeout_s=timeout_s)
        merged = heapq.merge(*streams, key=lambda w: w.t0_ns)
        if max_windows is not None:
            merged = itertools.islice(merged, max(0, int(max_windows)))
        bar = _ProgressBar(self.progress, max_windows)
        t_start = time.monotonic()
        if self.start_ns is None:
            self.replay_id = replay_id(time.time_ns())
            self.start_ns = replay_start_ns(self.replay_id)
        first_t0: int | None = None
        try:
            with bar:
                for i, w in enumerate(merged):
                    first_t0 = w.t0_ns if first_t0 is None else first_t0
                    offset = w.t0_ns - first_t0
                    stamp = self.start_ns + (round(offset / self.speed) if self.speed > 0 else i * 1000)
                    wait = (stamp - time.time_ns()) / 1e9
                    if wait > 0:  # never publish (or stamp) a window before its time
                        time.sleep(wait)
                    w = replace(w, t0_ns=stamp, meta={**w.meta, "replay_id": self.replay_id, "offset_ns": str(offset)})
                    sender.send(window_key(w.stream, w.seq), encode_window(w))
                    summary.sent += 1
                    self.sent_so_far = summary.sent
                    per_stream[w.stream] += 1
                    if w.label is not None:
                        labels[w.label] += 1
                    bar.advance()
        finally:
            sender.finish(timeout_s)
            summary.elapsed_s = time.monotonic() - t_start
        summary.failed, summary.errors, summary.new_sessions = sender.failed, sender.errors, sender.new_sessions
        summary.replay_id = self.replay_id
        summary.per_stream = dict(per_stream)
        summary.labels = dict(labels)
        summary.labelled = sum(labels.values())
        return summary


def replay_command(
    settings: Settings,
    dataset: str | None = None,
    records: Sequence[str | int] | None = None,
    speed: float = 1.0,
    max_windows: int | None = None,
    progress: bool = True,
    replay: str | None = None,
    *,
    files: Sequence[str | Path] = (),
    modality: str | None = None,
    fs: float | None = None,
    channel: str | None = None,
    lead: str | None = None,
    unit: str | None = None,
) -> ReplaySummary:
    """`sci-monitor replay`: publish recordings to the windows topic at ``settings.kafka_bootstrap``, with the Kafka
    security settings; ``replay``: the id of an earlier replay to repeat with its stamps.

    Either the recordings of a replay dataset of :mod:`streams.modalities` (``dataset`` ``mitdb``: record names,
    ``cwru``: file ids or file stems; default: the spec's ``replay_recordings``), or a user's own recording
    ``files`` of ``modality`` (read at ``fs`` Hz and in ``unit`` when a file does not state them, lead or variable
    ``channel``, announced as ``lead``). Every file is opened before anything is sent, so a wrong path or a missing
    rate fails at once.
    """
    from streams import modalities
    from streams.security import check_secrets, kafka_client_config

    check_secrets(settings)
    start_ns = time.time_ns()
    if files:
        if dataset is not None or records:
            raise ValueError("give either a dataset (with its records) or files, not both")
        if modality not in modalities.file_modalities():
            raise ValueError(f"modality must be one of {', '.join(modalities.file_modalities())} to replay files, "
                             f"got {modality!r}")
        spec = modalities.get(modality)
        streams = [spec.file_windows(str(f), start_ns=start_ns, fs=fs, channel=channel, lead=lead, unit=unit)
                   for f in files]
    else:
        specs = modalities.replay_datasets()
        if dataset not in specs:
            raise ValueError(f"dataset must be one of {', '.join(specs)}, got {dataset!r}")
        spec = specs[dataset]
        streams = [spec.replay_windows(r, start_ns=start_ns, root=settings.data_dir)
                   for r in (records or spec.replay_recordings)]
    replayer = Replayer(settings.kafka_bootstrap, settings.topics["windows"], speed=speed, progress=progress,
                        producer_config=kafka_client_config(settings), replay=replay)
    return replayer.run(streams, max_windows=max_windows)


class _ProgressBar:
    """rich progress bar (windows, windows/s), updated every 64 windows; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled = enabled
        self.total = total
        self._pending = 0

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("[bold]replay"),
                BarColumn(),
                TextColumn("{task.completed:,.0f} windows"),
                TextColumn("{task.fields[rate]:,.0f} windows/s"),
                TimeElapsedColumn(),
            )
            self._p.__enter__()
            self._task = self._p.add_task("replay", total=self.total, rate=0.0)
            self._t0 = time.monotonic()
        return self

    def advance(self) -> None:
        if not self.enabled:
            return
        self._pending += 1
        if self._pending >= 64:
            self._flush()

    def _flush(self) -> None:
        done = self._p.tasks[0].completed + self._pending
        rate = done / max(time.monotonic() - self._t0, 1e-9)
        self._p.update(self._task, advance=self._pending, rate=rate)
        self._pending = 0

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._flush()
            self._p.__exit__(*exc)


def publish_raw(
    bootstrap: str | None,
    topic: str,
    payloads: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    timeout_s: float = 30.0,
    producer_config: dict | None = None,
) -> int:
    """Produce arbitrary (e.g. malformed) payloads as they are; returns how many the broker acknowledged.

    ``producer_config``: extra kafka-python producer options (security, or ``max_request_size`` for huge
    payloads)."""
    producer = _producer(_bootstrap(bootstrap), **(producer_config or {}))
    keys = list(keys) if keys is not None else [None] * len(payloads)
    if len(keys) != len(payloads):
        raise ValueError(f"{len(keys)} keys for {len(payloads)} payloads")
    try:
        futures = [producer.send(topic, key=k, value=bytes(v)) for k, v in zip(keys, payloads, strict=True)]
        producer.flush(timeout=timeout_s)
        acked = 0
        for f in futures:
            try:
                f.get(timeout=timeout_s)
                acked += 1
            except Exception:
                pass
        return acked
    finally:
        producer.close(timeout=timeout_s)
