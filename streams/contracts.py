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
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self

import numpy as np
import orjson

from streams import modalities

__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "DECISIONS",
    "MAGIC",
    "MAX_ABS_SAMPLE",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_DEPTH",
    "MAX_STREAM_CHARS",
    "MAX_WINDOW_BYTES",
    "OUTPUT_VERSION",
    "SEVERITIES",
    "STAGES",
    "TIME_MAX_NS",
    "TIME_MIN_NS",
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
    "json_depth",
    "window_key",
]

MAGIC = b"SCIW"
WIRE_VERSION = 1
OUTPUT_VERSION = 1
DECISIONS = ("stopped", "abstained")
SEVERITIES = ("warning", "critical")
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_DTYPE = np.dtype("<f4")
_JSON_SEPARATORS = (",", ":")
Decision = Literal["stopped", "abstained"]
Severity = Literal["warning", "critical"]

# Limits checked at the door (decode_window / SensorWindow), so that no later step meets a value it cannot take.
MAX_WINDOW_BYTES = 1 << 20  # whole wire message; a window of the served models is 1-5 KB
MAX_HEADER_BYTES = 64 << 10  # JSON header
MAX_HEADER_DEPTH = 8  # nesting of the JSON header ({"features": {"rr": [...]}} is 3), checked before parsing
MAX_STREAM_CHARS = 128
MAX_LABEL_CHARS = 64
MAX_LEAD_CHARS = 16
MAX_QUALITY_CHARS = 64  # the input-check verdict: "ok" or check names joined by "+"
MAX_META_ITEMS, MAX_META_KEY_CHARS, MAX_META_VALUE_CHARS = 32, 64, 1024
MAX_FEATURES, MAX_FEATURE_VALUES = 16, 1024  # the ECG beat features carry a 256-sample template
MAX_FS_HZ = 1e7
# |sample| and |feature|: float32 holds 3.4e38, so a model multiplying such values overflows to inf (NaN SP);
# 1e9 leaves 1e29 of headroom for a layer's sums and squares and is far above any physical unit (mV, g) or
# 24-bit ADC count.
MAX_ABS_SAMPLE = 1e9
INT64_MAX = 2**63 - 1
# InfluxDB's time range (1.x: models.MinNanoTime/MaxNanoTime; 2.x the same), so every window can be stored
TIME_MIN_NS = -(2**63) + 2
TIME_MAX_NS = 2**63 - 2
# A dead letter must fit the producer's max request size (Faust and kafka-python default ~1 MB) with room for the
# record overhead; a larger original is carried truncated, with its size and SHA-256.
DEAD_LETTER_MAX_BYTES = 900_000
MAX_REASON_CHARS = 2000
MAX_DEAD_KEY_BYTES = 1024
# where in a batch a window failed (dead letter field "stage")
STAGES = ("decode", "model_check", "classify", "output", "send", "store")
_STREAM_RE = re.compile(r"[\w.:/@-]+")
_LEAD_RE = re.compile(r"[\w.-]+")
_JSON_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_PLAIN_NUMBERS = frozenset((int, float))


class ContractError(ValueError):
    """A message does not satisfy its contract; ``reason`` says precisely why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def window_key(stream: str, seq: int) -> bytes:
    """Kafka key and downstream idempotency key of a window: ``b"<stream>:<seq>"``.

    >>> window_key("mitdb-100", 7)
    b'mitdb-100:7'
    """
    return f"{stream}:{int(seq)}".encode()


# ----------------------------------------------------------------------------------------------------
# field checks shared by the input and output contracts


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def _check_str(name: str, x: Any, *, empty_ok: bool = False, max_chars: int | None = None) -> str:
    if not isinstance(x, str):
        raise ContractError(f"field {name!r} must be a string, got {type(x).__name__}")
    if not x and not empty_ok:
        raise ContractError(f"field {name!r} must not be empty")
    if max_chars is not None and len(x) > max_chars:
        raise ContractError(f"field {name!r} has {len(x)} characters, at most {max_chars} allowed")
    return x


def _check_opt_str(name: str, x: Any, max_chars: int | None = None) -> str | None:
    return None if x is None else _check_str(name, x, empty_ok=True, max_chars=max_chars)


def _check_stream(x: Any) -> str:
    """Stream id: 1..MAX_STREAM_CHARS letters, digits or ``_ . : / @ -`` (no spaces, quotes or controls).

    >>> _check_stream("mitdb-100")
    'mitdb-100'
    >>> _check_stream("bed 4")
    Traceback (most recent call last):
    ...
    streams.contracts.ContractError: field 'stream' has a character outside letters, digits and _.:/@- at index 3
    """
    x = _check_str("stream", x, max_chars=MAX_STREAM_CHARS)
    if not _STREAM_RE.fullmatch(x):
        bad = next(i for i, c in enumerate(x) if not _STREAM_RE.fullmatch(c))
        raise ContractError(f"field 'stream' has a character outside letters, digits and _.:/@- at index {bad}")
    return x


def _check_int(name: str, x: Any, *, minimum: int = -INT64_MAX - 1, maximum: int = INT64_MAX) -> int:
    """An integer within [minimum, maximum] (int64 by default); huge values are named by their size only."""
    if not _is_int(x):
        raise ContractError(f"field {name!r} must be an integer, got {type(x).__name__}")
    x = int(x)
    if x < minimum:
        raise ContractError(f"field {name!r} must be >= {minimum}, got {_short_int(x)}")
    if x > maximum:
        raise ContractError(f"field {name!r} must be <= {maximum}, got {_short_int(x)}")
    return x


def _short_int(x: int) -> str:
    return str(x) if abs(x) < 10**40 else f"an integer of {x.bit_length()} bits"


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
    if len(x) > MAX_FEATURES:
        raise ContractError(f"field 'features' has {len(x)} entries, at most {MAX_FEATURES} allowed")
    out: dict[str, list[float]] = {}
    for k, v in x.items():
        if not isinstance(k, str) or not k or len(k) > MAX_META_KEY_CHARS:
            raise ContractError(f"field 'features' has a key that is not a string of 1..{MAX_META_KEY_CHARS} "
                                f"characters: {str(k)[:MAX_META_KEY_CHARS]!r}")
        if isinstance(v, np.ndarray):
            v = v.tolist()
        # JSON gives plain float/int elements: one set of types instead of a check per element
        if not isinstance(v, list | tuple) or not (set(map(type, v)) <= _PLAIN_NUMBERS
                                                    or all(_is_number(e) for e in v)):
            raise ContractError(f"feature {k!r} must be a list of numbers")
        if len(v) > MAX_FEATURE_VALUES:
            raise ContractError(f"feature {k!r} has {len(v)} values, at most {MAX_FEATURE_VALUES} allowed")
        try:
            arr = np.array(v, dtype=np.float64)
        except OverflowError:  # an int beyond float range
            raise ContractError(f"feature {k!r} has a value beyond float range") from None
        vals = arr.tolist()
        finite = np.isfinite(arr)
        if not finite.all():
            raise ContractError(f"feature {k!r} has non-finite values: {vals[:8]}")
        if arr.size and np.abs(arr).max() > MAX_ABS_SAMPLE:
            raise ContractError(f"feature {k!r} has a value of magnitude > {MAX_ABS_SAMPLE:g}")
        out[k] = vals
    return out


def _check_meta(x: Any) -> dict[str, str]:
    if not isinstance(x, dict):
        raise ContractError(f"field 'meta' must be an object of string -> string, got {type(x).__name__}")
    if len(x) > MAX_META_ITEMS:
        raise ContractError(f"field 'meta' has {len(x)} entries, at most {MAX_META_ITEMS} allowed")
    for k, v in x.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ContractError(f"field 'meta' entry {k!r:.64}: {v!r:.64} is not string -> string")
        if len(k) > MAX_META_KEY_CHARS or len(v) > MAX_META_VALUE_CHARS:
            raise ContractError(f"field 'meta' entry {k[:64]!r} is longer than {MAX_META_KEY_CHARS} (key) or "
                                f"{MAX_META_VALUE_CHARS} (value) characters")
    return dict(x)


def json_depth(data: bytes) -> int:
    """Deepest nesting of objects/arrays in JSON text, counted without parsing (brackets inside strings are
    ignored), so a hostile header cannot make ``json.loads`` recurse. Vectorised: one regex pass drops the
    strings, a cumulative sum over the bracket bytes gives the depth.

    >>> json_depth(b'{"a": [1, {"b": "]]{{"}]}')
    3
    >>> json_depth(b'1')
    0
    """
    text = np.frombuffer(_JSON_STRING_RE.sub(b'""', data), np.uint8)
    step = ((text == 0x5B) | (text == 0x7B)).astype(np.int32) - ((text == 0x5D) | (text == 0x7D)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


# Integers beyond 64 bits, found without a regex (which costs 80 us on a beat's 268 feature numbers): digits map
# to "0", the characters that continue a number ("." "e" "E" "+") to ".", the minus sign stays, everything else
# (the delimiters , : [ { and whitespace) maps to " "; an integer of >= 20 digits, or a negative one of >= 19, then
# shows as " " + 20 zeros or " -" + 19 zeros (a fraction or an exponent is preceded by "." instead).
_NUMBER_SHAPE = bytes(ord("0") if c in "0123456789" else ord(".") if c in ".eE+" else ord("-") if c == "-" else ord(" ")
                      for c in map(chr, range(256)))
_BIG_INTS = (b" " + b"0" * 20, b" -" + b"0" * 19)


def _has_big_int(data: bytes) -> bool:
    """Whether JSON text ``data`` may hold an integer beyond 64 bits (digits inside strings count too).

    >>> _has_big_int(b'{"t0_ns": 1795354727038093683, "x": [0.00012345678901234567, 1e-5]}')
    False
    >>> _has_big_int(b'[12345678901234567890]'), _has_big_int(b'{"a": -9223372036854775809}')
    (True, True)
    """
    shape = b" " + data.translate(_NUMBER_SHAPE)
    return any(pattern in shape for pattern in _BIG_INTS)


def _reject_constant(name: str) -> float:
    raise ContractError(f"header not JSON: non-standard constant {name}")


def _loads_object(data: bytes | str, what: str, max_depth: int | None = None) -> dict[str, Any]:
    if max_depth is not None:
        raw = data.encode() if isinstance(data, str) else data
        # nesting never exceeds the number of opening brackets (those inside strings included): a header with at
        # most max_depth of them needs no scan
        depth = raw.count(b"[") + raw.count(b"{")
        if depth > max_depth:
            depth = json_depth(raw)
        if depth > max_depth:
            raise ContractError(f"{what} nested {depth} levels deep, at most {max_depth} allowed")
    try:
        # orjson parses well-formed headers about 8x faster (65 -> 8 us for an ECG beat's header). What it refuses
        # (NaN, 1e400, lone surrogates, malformed text) or would read differently (integers beyond 64 bits, which
        # it turns into floats: a run of 20 digits, or 19 after a minus sign) goes to the standard parser, so the
        # accepted inputs, the values and the error messages are exactly those of ``json.loads``
        if isinstance(data, str) or _has_big_int(data):
            raise orjson.JSONDecodeError("text, or an integer beyond 64 bits", "", 0)
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(data, parse_constant=_reject_constant)
        except ContractError:
            raise
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ContractError(f"{what} not JSON: {str(e)[:200]}") from None
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

    ``samples``: float32[L] at ``fs`` Hz (validated: 1-D, non-empty, finite, |x| <= ``MAX_ABS_SAMPLE``);
    ``t0_ns``: UTC ns of samples[0], within InfluxDB's time range; ``seq``: per-stream counter from 0 (int64);
    ``stream``: 1..128 letters, digits or ``_ . : / @ -``; ``label``: ground truth when the replay knows it;
    ``features``: e.g. ``{"beat": [...]}`` for ECG (``models.data.mitdb.BEAT_FEATURES``); ``lead``: the sensor
    channel (ECG "MLII", "V1", ...; vibration "DE", "FE"; at most 16 letters, digits or ``_ . -``), None = the
    modality's default lead (:mod:`streams.modalities`). Construction validates the same rules as
    :func:`decode_window` (raises :class:`ContractError`).
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
    lead: str | None = None

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "stream", _check_stream(self.stream))
        s(self, "modality", _check_choice("modality", self.modality, modalities.names(), "modality"))
        if self.lead is not None:
            s(self, "lead", _check_str("lead", self.lead, max_chars=MAX_LEAD_CHARS))
            if not _LEAD_RE.fullmatch(self.lead):
                raise ContractError("field 'lead' has a character outside letters, digits and _.-")
        fs = _check_float("fs", self.fs)
        if not 0 < fs <= MAX_FS_HZ:
            raise ContractError(f"field 'fs' must be > 0 Hz and <= {MAX_FS_HZ:g} Hz, got {fs}")
        s(self, "fs", fs)
        s(self, "t0_ns", _check_int("t0_ns", self.t0_ns, minimum=TIME_MIN_NS, maximum=TIME_MAX_NS))
        s(self, "seq", _check_int("seq", self.seq, minimum=0))
        s(self, "label", _check_opt_str("label", self.label, MAX_LABEL_CHARS))
        if self.label is not None and not self.label.isprintable():
            raise ContractError("field 'label' has a control character")
        s(self, "features", _check_features(self.features))
        s(self, "meta", _check_meta(self.meta))
        samples = np.asarray(self.samples)
        if samples.ndim != 1:
            raise ContractError(f"samples must be 1-D float32[L], got shape {samples.shape}")
        if samples.dtype != np.float32:
            samples = samples.astype(np.float32)
        if samples.size == 0:
            raise ContractError("empty samples: n must be >= 1")
        if samples.size > MAX_WINDOW_BYTES // _DTYPE.itemsize:
            raise ContractError(f"{samples.size} samples, at most {MAX_WINDOW_BYTES // _DTYPE.itemsize} allowed")
        finite = np.isfinite(samples)
        if not finite.all():
            raise ContractError(f"non-finite samples at index {int(np.argmin(finite))}")
        peak = np.abs(samples).max()
        if peak > MAX_ABS_SAMPLE:
            raise ContractError(f"sample magnitude {float(peak):.3g} at index {int(np.argmax(np.abs(samples)))} "
                                f"exceeds {MAX_ABS_SAMPLE:g}")
        s(self, "samples", samples)

    @property
    def key(self) -> bytes:
        return window_key(self.stream, self.seq)

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
            and self.lead == other.lead
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
    if w.lead is not None:  # optional: absent means the modality's default lead
        header["lead"] = w.lead
    h = json.dumps(header, separators=_JSON_SEPARATORS, allow_nan=False).encode()
    return b"".join((_PREFIX.pack(MAGIC, WIRE_VERSION, len(h)), h, w.samples.astype(_DTYPE, copy=False).tobytes()))


def decode_window(data: bytes) -> SensorWindow:
    """Parse and validate wire bytes; raises :class:`ContractError` with a precise reason when malformed.

    ``samples`` of the result is a read-only zero-copy view into ``data``. The window length is not checked
    against a model here (the worker does that). Sizes are checked before anything is parsed: the message
    (``MAX_WINDOW_BYTES``), the header (``MAX_HEADER_BYTES``) and its JSON nesting (``MAX_HEADER_DEPTH``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ContractError(f"message must be bytes, got {type(data).__name__}")
    mv = memoryview(data)
    if len(mv) > MAX_WINDOW_BYTES:
        raise ContractError(f"message of {len(mv)} bytes exceeds the limit of {MAX_WINDOW_BYTES} bytes")
    if len(mv) < _PREFIX.size:
        raise ContractError(f"truncated: {len(mv)} bytes, the prefix alone needs {_PREFIX.size}")
    magic, version, hlen = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise ContractError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != WIRE_VERSION:
        raise ContractError(f"unknown version {version}, this decoder reads version {WIRE_VERSION}")
    if hlen > MAX_HEADER_BYTES:
        raise ContractError(f"header length {hlen} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    body = _PREFIX.size + hlen
    if len(mv) < body:
        raise ContractError(f"truncated: header length {hlen} but only {len(mv) - _PREFIX.size} bytes follow")
    h = _loads_object(bytes(mv[_PREFIX.size : body]), "header", MAX_HEADER_DEPTH)
    for name in _HEADER_FIELDS:
        if name not in h:
            raise ContractError(f"missing field {name!r}")
    if h["dtype"] != "<f4":
        raise ContractError(f"invalid field 'dtype': {h['dtype']!r}, only '<f4' is defined in version 1")
    n = _check_int("n", h["n"], minimum=0, maximum=MAX_WINDOW_BYTES)
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
        lead=h.get("lead"),
    )


# ----------------------------------------------------------------------------------------------------
# outputs: labels, escalations, alerts (JSON, "v": 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelMessage:
    """Decision of the worker for one window (topic ``sci.labels``).

    ``probs``: class -> softmax(z̄/T) of the mean logits of the MC-dropout passes; ``sp``: interpretive state
    SP = 1 − H(probs)/log K after ``passes`` passes; ``delta_sp``: |SP* − SP|; ``decision``: "stopped" |
    "abstained" (an escalation); ``reason``: the stop rule that fired or why it abstained; ``novelty``: the
    novelty gate's score (> 1: unfamiliar, reason ``unfamiliar``); ``quality``: the input-check verdict (``ok`` or
    the failed checks joined by ``+``, e.g. ``flat``, ``clipped+amplitude``; reason ``signal_quality``);
    ``confidence``: the risk rule's score (answered only at or above its certified threshold); each null when the
    model's card has no such check or no model ran; ``truth``/``correct``: null when the replay does not know the
    label; ``latency_ms``: Kafka produce time of the window -> decision; ``lead``: the lead the window was routed
    by. A window no model serves (reason ``unsupported_lead``) is abstained with ``passes`` 0, empty ``model``,
    ``label`` and ``probs``; a window the controller's gate stops (``unfamiliar``, ``signal_quality``) also has
    ``passes`` 0, with the plain pass's label and probs.
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
    novelty: float | None = None
    quality: str | None = None
    confidence: float | None = None
    truth: str | None = None
    correct: bool | None = None
    latency_ms: float
    worker: str
    lead: str | None = None

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
        if d["lead"] is None:  # optional and additive: absent rather than null
            del d["lead"]
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
            if name not in obj and name not in _OPTIONAL_LABEL_FIELDS:
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


_OPTIONAL_LABEL_FIELDS = ("truth", "correct", "lead", "novelty", "quality", "confidence")  # may be absent: None
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
    s(m, "passes", _check_int("passes", m.passes, minimum=0))
    unserved = m.passes == 0  # no model ran (unsupported lead): no model, label or probs
    for name in ("stream", "model", "label", "reason", "worker"):
        empty_ok = name == "reason" or (unserved and name in ("model", "label"))
        s(m, name, _check_str(name, getattr(m, name), empty_ok=empty_ok))
    _check_choice("modality", m.modality, modalities.names(), "modality")
    _check_choice("decision", m.decision, DECISIONS, "decision")
    s(m, "seq", _check_int("seq", m.seq, minimum=0))
    s(m, "t0_ns", _check_int("t0_ns", m.t0_ns))
    s(m, "lead", _check_opt_str("lead", m.lead))
    for name in ("sp", "delta_sp", "latency_ms"):
        s(m, name, _check_float(name, getattr(m, name)))
    if not isinstance(m.probs, dict) or not (m.probs or unserved):
        raise ContractError("field 'probs' must be a non-empty object of class -> probability")
    s(m, "probs", {_check_str("probs key", k): _check_float(f"probs[{k!r}]", p) for k, p in m.probs.items()})
    for name in ("novelty", "confidence"):
        if getattr(m, name) is not None:
            s(m, name, _check_float(name, getattr(m, name)))
    s(m, "quality", _check_opt_str("quality", m.quality, MAX_QUALITY_CHARS))
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
    """A message the worker could not process (topic ``sci.deadletter``), with the original bytes.

    ``stage``: where it failed (one of ``STAGES``); ``original``: the whole message, or its first bytes when
    ``truncated`` (the whole did not fit ``DEAD_LETTER_MAX_BYTES``); ``original_size`` and ``original_sha256``
    always describe the whole message.
    """

    reason: str
    error_type: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    original: bytes
    stage: str = "decode"
    original_size: int = 0
    original_sha256: str = ""
    truncated: bool = False


def dead_letter(
    original: bytes,
    reason: str | BaseException,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    error_type: str | None = None,
    *,
    stage: str = "decode",
    max_bytes: int = DEAD_LETTER_MAX_BYTES,
) -> bytes:
    """JSON dead letter of at most ``max_bytes``: reason, error type, stage, source topic/partition/offset, key
    and the original bytes (base64) with their size and SHA-256.

    ``reason`` may be an exception; its class name then becomes ``error_type`` unless given. The reason is cut
    to ``MAX_REASON_CHARS`` characters and the key to ``MAX_DEAD_KEY_BYTES`` bytes. When the whole original does
    not fit, ``original_b64`` holds its first bytes and ``original_truncated`` is true (size and hash still
    identify the whole). ``key_text`` is a lossy UTF-8 rendering of the key for people; ``key_b64`` is exact.
    """
    if isinstance(reason, BaseException):
        error_type = error_type or type(reason).__name__
        reason = str(reason)
    reason = str(reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"... ({len(reason)} characters)"
    _check_choice("stage", stage, STAGES, "stage")
    original = bytes(original)
    key_b = bytes(key)[:MAX_DEAD_KEY_BYTES] if key is not None else None
    obj = {
        "v": OUTPUT_VERSION,
        "reason": reason,
        "error_type": error_type or "ContractError",
        "stage": stage,
        "topic": str(topic),
        "partition": int(partition),
        "offset": int(offset),
        "key_text": key_b.decode("utf-8", "replace") if key_b is not None else None,
        "key_b64": base64.b64encode(key_b).decode("ascii") if key_b is not None else None,
        "key_truncated": key is not None and len(key) > MAX_DEAD_KEY_BYTES,
        "original_size": len(original),
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_truncated": False,
        "original_b64": "",
    }
    room = max_bytes - len(_dumps(obj)) - 8  # 8: "true" instead of "false" plus slack
    if room < 0:
        raise ValueError(f"max_bytes={max_bytes} is too small for a dead letter")
    keep = min(len(original), room // 4 * 3)  # base64: 4 characters per 3 bytes
    obj["original_truncated"] = keep < len(original)
    obj["original_b64"] = base64.b64encode(original[:keep]).decode("ascii")
    return _dumps(obj)


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
        stage=_check_choice("stage", obj.get("stage", "decode"), STAGES, "stage"),
        original_size=_check_int("original_size", obj.get("original_size", len(original)), minimum=0),
        original_sha256=_check_str("original_sha256", obj.get("original_sha256", hashlib.sha256(original).hexdigest())),
        truncated=bool(obj.get("original_truncated", False)),
    )
