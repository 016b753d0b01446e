"""Versioned message contracts of sci-monitor, validated on the way in.

Input, topic ``sci.windows``: one :class:`SensorWindow` per Kafka message, binary wire format v1::

    b"SCIW" | uint8 version (=1) | uint32 LE header length H | H bytes UTF-8 JSON header | samples as <f4

The JSON header holds every field except ``samples`` plus ``"n"`` (number of samples) and ``"dtype": "<f4"``.
Why not plain JSON: decoding the samples is a single ``np.frombuffer`` (zero-copy, no float parsing), a sample
costs 4 bytes instead of ~10 characters of JSON text, and the small header stays human-debuggable
(``data[9:9 + H]`` is readable JSON). Unknown header keys are ignored so that additive changes stay version 1;
anything that changes the meaning of an existing field needs a new version byte.

Outputs (``sci.labels``, ``sci.escalations``, ``sci.alerts``, ``sci.deadletter``) are compact JSON objects
that carry ``"v": 1``, because people and dashboards subscribe to them.

The Kafka key of a window (and the idempotency key downstream, e.g. ``escalation_id``) is
:func:`window_key` = ``b"<stream>:<seq>"``.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self

import numpy as np

__all__ = [
    "DECISIONS",
    "MAGIC",
    "MODALITIES",
    "OUTPUT_VERSION",
    "SEVERITIES",
    "WIRE_VERSION",
    "AlertMessage",
    "ContractError",
    "DeadLetter",
    "EscalationMessage",
    "LabelMessage",
    "SensorWindow",
    "dead_letter",
    "decode_dead_letter",
    "decode_window",
    "encode_window",
    "window_key",
]

MAGIC = b"SCIW"
WIRE_VERSION = 1
OUTPUT_VERSION = 1
MODALITIES = ("ecg", "vibration")
DECISIONS = ("stopped", "abstained")
SEVERITIES = ("warning", "critical")
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_DTYPE = np.dtype("<f4")
_JSON_SEPARATORS = (",", ":")
Decision = Literal["stopped", "abstained"]
Severity = Literal["warning", "critical"]


class ContractError(ValueError):
    """A message does not satisfy its contract; ``reason`` says precisely why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def window_key(stream: str, seq: int) -> bytes:
    """Kafka key and downstream idempotency key of a window: ``b"<stream>:<seq>"``."""
    return f"{stream}:{int(seq)}".encode()


# ----------------------------------------------------------------------------------------------------
# field checks shared by the input and output contracts


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def _check_str(name: str, x: Any, *, empty_ok: bool = False) -> str:
    if not isinstance(x, str):
        raise ContractError(f"field {name!r} must be a string, got {type(x).__name__}")
    if not x and not empty_ok:
        raise ContractError(f"field {name!r} must not be empty")
    return x


def _check_opt_str(name: str, x: Any) -> str | None:
    return None if x is None else _check_str(name, x, empty_ok=True)


def _check_int(name: str, x: Any, *, minimum: int | None = None) -> int:
    if not _is_int(x):
        raise ContractError(f"field {name!r} must be an integer, got {type(x).__name__}")
    x = int(x)
    if minimum is not None and x < minimum:
        raise ContractError(f"field {name!r} must be >= {minimum}, got {x}")
    return x


def _check_float(name: str, x: Any) -> float:
    if not _is_number(x):
        raise ContractError(f"field {name!r} must be a number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ContractError(f"field {name!r} must be finite, got {x}")
    return x


def _check_choice(name: str, x: Any, choices: tuple[str, ...], what: str) -> str:
    if x not in choices:
        raise ContractError(f"unknown {what} {x!r} in field {name!r}; expected one of {list(choices)}")
    return x


def _check_features(x: Any) -> dict[str, list[float]]:
    if not isinstance(x, dict):
        raise ContractError(f"field 'features' must be an object of name -> list of numbers, got {type(x).__name__}")
    out: dict[str, list[float]] = {}
    for k, v in x.items():
        if not isinstance(k, str):
            raise ContractError(f"field 'features' has a non-string key {k!r}")
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if not isinstance(v, list | tuple) or not all(_is_number(e) for e in v):
            raise ContractError(f"feature {k!r} must be a list of numbers")
        vals = [float(e) for e in v]
        if not all(math.isfinite(e) for e in vals):
            raise ContractError(f"feature {k!r} has non-finite values: {vals}")
        out[k] = vals
    return out


def _check_meta(x: Any) -> dict[str, str]:
    if not isinstance(x, dict):
        raise ContractError(f"field 'meta' must be an object of string -> string, got {type(x).__name__}")
    for k, v in x.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ContractError(f"field 'meta' entry {k!r}: {v!r} is not string -> string")
    return dict(x)


def _reject_constant(name: str) -> float:
    raise ContractError(f"header not JSON: non-standard constant {name}")


def _loads_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except ContractError:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise ContractError(f"{what} not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ContractError(f"{what} is not a JSON object (got {type(obj).__name__})")
    return obj


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return json.dumps(obj, separators=_JSON_SEPARATORS, allow_nan=False, default=_json_default).encode()
    except ValueError as e:  # NaN/inf
        raise ContractError(f"cannot encode message: {e}") from None


# ----------------------------------------------------------------------------------------------------
# input: sensor windows


@dataclass(frozen=True, eq=False, slots=True)
class SensorWindow:
    """One window of one sensor stream (topic ``sci.windows``).

    ``samples``: float32[L] at ``fs`` Hz (validated: 1-D, non-empty, finite); ``t0_ns``: UTC ns of samples[0];
    ``seq``: per-stream counter from 0; ``label``: ground truth when the replay knows it;
    ``features``: e.g. ``{"beat": [11 per-stream beat features]}`` for ECG (``models.data.mitdb.BEAT_FEATURES``).
    Construction validates the same rules as :func:`decode_window` (raises :class:`ContractError`).
    """

    stream: str
    modality: str
    fs: float
    t0_ns: int
    seq: int
    samples: np.ndarray
    label: str | None = None
    features: dict[str, list[float]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "stream", _check_str("stream", self.stream))
        s(self, "modality", _check_choice("modality", self.modality, MODALITIES, "modality"))
        fs = _check_float("fs", self.fs)
        if fs <= 0:
            raise ContractError(f"field 'fs' must be > 0 Hz, got {fs}")
        s(self, "fs", fs)
        s(self, "t0_ns", _check_int("t0_ns", self.t0_ns))
        s(self, "seq", _check_int("seq", self.seq, minimum=0))
        s(self, "label", _check_opt_str("label", self.label))
        s(self, "features", _check_features(self.features))
        s(self, "meta", _check_meta(self.meta))
        samples = np.asarray(self.samples)
        if samples.ndim != 1:
            raise ContractError(f"samples must be 1-D float32[L], got shape {samples.shape}")
        if samples.dtype != np.float32:
            samples = samples.astype(np.float32)
        if samples.size == 0:
            raise ContractError("empty samples: n must be >= 1")
        finite = np.isfinite(samples)
        if not finite.all():
            raise ContractError(f"non-finite samples at index {int(np.argmin(finite))}")
        s(self, "samples", samples)

    @property
    def key(self) -> bytes:
        return window_key(self.stream, self.seq)

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.fs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SensorWindow):
            return NotImplemented
        return (
            self.stream == other.stream
            and self.modality == other.modality
            and self.fs == other.fs
            and self.t0_ns == other.t0_ns
            and self.seq == other.seq
            and self.label == other.label
            and self.features == other.features
            and self.meta == other.meta
            and np.array_equal(self.samples, other.samples)
        )

    __hash__ = None  # type: ignore[assignment]


_HEADER_FIELDS = ("stream", "modality", "fs", "t0_ns", "seq", "label", "features", "meta", "n", "dtype")


def encode_window(w: SensorWindow) -> bytes:
    """Wire bytes (format v1, see module docstring) of a validated window."""
    header = {
        "stream": w.stream,
        "modality": w.modality,
        "fs": w.fs,
        "t0_ns": w.t0_ns,
        "seq": w.seq,
        "label": w.label,
        "features": w.features,
        "meta": w.meta,
        "n": int(w.samples.size),
        "dtype": "<f4",
    }
    h = json.dumps(header, separators=_JSON_SEPARATORS, allow_nan=False).encode()
    return b"".join((_PREFIX.pack(MAGIC, WIRE_VERSION, len(h)), h, w.samples.astype(_DTYPE, copy=False).tobytes()))


def decode_window(data: bytes) -> SensorWindow:
    """Parse and validate wire bytes; raises :class:`ContractError` with a precise reason when malformed.

    ``samples`` of the result is a read-only zero-copy view into ``data``. The window length is not checked
    against a model here (the worker does that).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ContractError(f"message must be bytes, got {type(data).__name__}")
    mv = memoryview(data)
    if len(mv) < _PREFIX.size:
        raise ContractError(f"truncated: {len(mv)} bytes, the prefix alone needs {_PREFIX.size}")
    magic, version, hlen = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise ContractError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != WIRE_VERSION:
        raise ContractError(f"unknown version {version}, this decoder reads version {WIRE_VERSION}")
    body = _PREFIX.size + hlen
    if len(mv) < body:
        raise ContractError(f"truncated: header length {hlen} but only {len(mv) - _PREFIX.size} bytes follow")
    h = _loads_object(bytes(mv[_PREFIX.size : body]), "header")
    for name in _HEADER_FIELDS:
        if name not in h:
            raise ContractError(f"missing field {name!r}")
    if h["dtype"] != "<f4":
        raise ContractError(f"invalid field 'dtype': {h['dtype']!r}, only '<f4' is defined in version 1")
    n = _check_int("n", h["n"], minimum=0)
    payload = len(mv) - body
    if payload != 4 * n:
        raise ContractError(f"n mismatch: header says n={n} ({4 * n} bytes), payload has {payload} bytes")
    return SensorWindow(
        stream=h["stream"],
        modality=h["modality"],
        fs=h["fs"],
        t0_ns=h["t0_ns"],
        seq=h["seq"],
        samples=np.frombuffer(mv, dtype=_DTYPE, count=n, offset=body),
        label=h["label"],
        features=h["features"],
        meta=h["meta"],
    )


# ----------------------------------------------------------------------------------------------------
# outputs: labels, escalations, alerts (JSON, "v": 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelMessage:
    """Decision of the worker for one window (topic ``sci.labels``).

    ``probs``: class -> softmax(z̄/T) of the mean logits of the MC-dropout passes; ``sp``: interpretive state
    SP = 1 − H(probs)/log K after ``passes`` passes; ``delta_sp``: |SP* − SP|; ``decision``: "stopped" |
    "abstained" (an escalation); ``reason``: the stop rule that fired or why it abstained; ``truth``/``correct``:
    null when the replay does not know the label; ``latency_ms``: Kafka produce time of the window -> decision.
    """

    stream: str
    modality: str
    seq: int
    t0_ns: int
    model: str
    label: str
    probs: dict[str, float]
    sp: float
    delta_sp: float
    passes: int
    decision: Decision
    reason: str
    truth: str | None = None
    correct: bool | None = None
    latency_ms: float
    worker: str

    topic: ClassVar[str] = "sci.labels"

    def __post_init__(self) -> None:
        _validate_output(self)

    @property
    def key(self) -> bytes:
        return window_key(self.stream, self.seq)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": OUTPUT_VERSION}
        for f in _field_names(type(self)):
            d[f] = getattr(self, f)
        return d

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        obj = _loads_object(data, "message")
        v = obj.get("v")
        if v != OUTPUT_VERSION:
            raise ContractError(f"unknown version {v!r} of {cls.__name__}, expected {OUTPUT_VERSION}")
        names = _field_names(cls)
        for name in names:
            if name not in obj and name not in ("truth", "correct"):
                raise ContractError(f"missing field {name!r}")
        return cls(**{k: obj[k] for k in names if k in obj})


@dataclass(frozen=True, kw_only=True, slots=True)
class EscalationMessage(LabelMessage):
    """A window handed to a person (topic ``sci.escalations``); ``escalation_id`` = window key, idempotent."""

    escalation_id: str

    topic: ClassVar[str] = "sci.escalations"

    @classmethod
    def from_label(cls, m: LabelMessage) -> EscalationMessage:
        return cls(**_label_fields(m), escalation_id=m.key.decode())


@dataclass(frozen=True, kw_only=True, slots=True)
class AlertMessage(LabelMessage):
    """A clinically/operationally relevant event (topic ``sci.alerts``) with the threshold that fired."""

    severity: Severity
    threshold: float

    topic: ClassVar[str] = "sci.alerts"

    @classmethod
    def from_label(cls, m: LabelMessage, severity: str, threshold: float) -> AlertMessage:
        return cls(**_label_fields(m), severity=severity, threshold=threshold)


_FIELD_CACHE: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_CACHE.get(cls)
    if names is None:
        names = _FIELD_CACHE[cls] = tuple(f.name for f in fields(cls))
    return names


def _label_fields(m: LabelMessage) -> dict[str, Any]:
    return {f: getattr(m, f) for f in _field_names(LabelMessage)}


def _validate_output(m: LabelMessage) -> None:
    s = object.__setattr__
    for name in ("stream", "model", "label", "reason", "worker"):
        s(m, name, _check_str(name, getattr(m, name), empty_ok=name == "reason"))
    _check_choice("modality", m.modality, MODALITIES, "modality")
    _check_choice("decision", m.decision, DECISIONS, "decision")
    s(m, "seq", _check_int("seq", m.seq, minimum=0))
    s(m, "t0_ns", _check_int("t0_ns", m.t0_ns))
    s(m, "passes", _check_int("passes", m.passes, minimum=0))
    for name in ("sp", "delta_sp", "latency_ms"):
        s(m, name, _check_float(name, getattr(m, name)))
    if not isinstance(m.probs, dict) or not m.probs:
        raise ContractError("field 'probs' must be a non-empty object of class -> probability")
    s(m, "probs", {_check_str("probs key", k): _check_float(f"probs[{k!r}]", p) for k, p in m.probs.items()})
    s(m, "truth", _check_opt_str("truth", m.truth))
    if m.correct is not None and not isinstance(m.correct, bool | np.bool_):
        raise ContractError(f"field 'correct' must be true, false or null, got {m.correct!r}")
    if m.correct is not None:
        s(m, "correct", bool(m.correct))
    if isinstance(m, EscalationMessage):
        s(m, "escalation_id", _check_str("escalation_id", m.escalation_id))
    if isinstance(m, AlertMessage):
        _check_choice("severity", m.severity, SEVERITIES, "severity")
        s(m, "threshold", _check_float("threshold", m.threshold))


# ----------------------------------------------------------------------------------------------------
# dead letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the worker could not process (topic ``sci.deadletter``), with the original bytes."""

    reason: str
    error_type: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    original: bytes


def dead_letter(
    original: bytes,
    reason: str | BaseException,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    error_type: str | None = None,
) -> bytes:
    """JSON dead letter: reason, error type, source topic/partition/offset, key and original bytes (base64).

    ``reason`` may be an exception; its class name then becomes ``error_type`` unless given.
    ``key_text`` is a lossy UTF-8 rendering of the key for people; ``key_b64`` is exact.
    """
    if isinstance(reason, BaseException):
        error_type = error_type or type(reason).__name__
        reason = str(reason)
    key_b = bytes(key) if key is not None else None
    return _dumps(
        {
            "v": OUTPUT_VERSION,
            "reason": str(reason),
            "error_type": error_type or "ContractError",
            "topic": str(topic),
            "partition": int(partition),
            "offset": int(offset),
            "key_text": key_b.decode("utf-8", "replace") if key_b is not None else None,
            "key_b64": base64.b64encode(key_b).decode("ascii") if key_b is not None else None,
            "original_b64": base64.b64encode(bytes(original)).decode("ascii"),
        }
    )


def decode_dead_letter(data: bytes) -> DeadLetter:
    """Inverse of :func:`dead_letter` (for tests and tools)."""
    obj = _loads_object(data, "dead letter")
    if obj.get("v") != OUTPUT_VERSION:
        raise ContractError(f"unknown version {obj.get('v')!r} of DeadLetter, expected {OUTPUT_VERSION}")
    for name in ("reason", "error_type", "topic", "partition", "offset", "key_b64", "original_b64"):
        if name not in obj:
            raise ContractError(f"missing field {name!r}")
    try:
        key = base64.b64decode(obj["key_b64"], validate=True) if obj["key_b64"] is not None else None
        original = base64.b64decode(obj["original_b64"], validate=True)
    except (TypeError, ValueError) as e:
        raise ContractError(f"invalid base64 in dead letter: {e}") from None
    return DeadLetter(
        reason=_check_str("reason", obj["reason"], empty_ok=True),
        error_type=_check_str("error_type", obj["error_type"]),
        topic=_check_str("topic", obj["topic"]),
        partition=_check_int("partition", obj["partition"]),
        offset=_check_int("offset", obj["offset"]),
        key=key,
        original=original,
    )
