"""Message contracts: round trips on random windows/messages and one precise reason per malformed input."""

from __future__ import annotations

import base64
import dataclasses
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from poison import MODEL_REJECTED, POISON, REASONS

from streams.contracts import (
    DEAD_LETTER_MAX_BYTES,
    MAGIC,
    MAX_ABS_SAMPLE,
    MAX_HEADER_DEPTH,
    TIME_MAX_NS,
    TIME_MIN_NS,
    AlertMessage,
    ContractError,
    EscalationMessage,
    LabelMessage,
    SensorWindow,
    _loads_object,
    dead_letter,
    decode_dead_letter,
    decode_window,
    encode_window,
    json_depth,
    window_key,
)

RNG_SEED = 20240611


def random_window(rng: np.random.Generator) -> SensorWindow:
    n = int(rng.integers(1, 4096))
    scale = 10.0 ** rng.uniform(-6, 5)
    samples = (rng.standard_normal(n) * scale).astype(np.float32)
    samples[rng.random(n) < 0.01] = np.float32(0.0)
    modality = str(rng.choice(["ecg", "vibration"]))
    features = {f"f{i}": rng.standard_normal(int(rng.integers(0, 6))).tolist() for i in range(rng.integers(0, 3))}
    meta = {f"k{i}": "välue-" + str(rng.integers(1e9)) for i in range(rng.integers(0, 4))}
    return SensorWindow(
        stream=f"stream-ü{rng.integers(100)}",
        modality=modality,
        fs=float(rng.choice([360.0, 12000.0, 250.5])),
        t0_ns=int(rng.integers(-(2**62), 2**62)),
        seq=int(rng.integers(0, 2**62)),
        samples=samples,
        label=None if rng.random() < 0.3 else str(rng.choice(["N", "S", "V", "F", "inner"])),
        features=features,
        meta=meta,
    )


def test_window_round_trip_random() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(300):
        w = random_window(rng)
        data = encode_window(w)
        back = decode_window(data)
        assert back == w
        assert back.samples.dtype == np.float32
        assert np.array_equal(back.samples.view(np.uint32), w.samples.view(np.uint32))  # bit-exact
        assert len(data) == 9 + struct.unpack_from("<I", data, 5)[0] + 4 * w.samples.size
        assert decode_window(bytearray(data)) == w
        assert decode_window(memoryview(data)) == w


def test_wire_layout_by_hand() -> None:
    w = SensorWindow(
        stream="mitdb-100",
        modality="ecg",
        fs=360,
        t0_ns=1_700_000_000_000_000_000,
        seq=7,
        samples=np.array([1.0, -2.5], np.float32),
        label="N",
        features={"rr": [0.8, 0.81, 0.79, 1.01]},
        meta={"record": "100"},
    )
    data = encode_window(w)
    assert data[:4] == b"SCIW" and data[4] == 1
    (hlen,) = struct.unpack_from("<I", data, 5)
    header = json.loads(data[9 : 9 + hlen])
    assert header == {
        "stream": "mitdb-100",
        "modality": "ecg",
        "fs": 360.0,
        "t0_ns": 1_700_000_000_000_000_000,
        "seq": 7,
        "label": "N",
        "features": {"rr": [0.8, 0.81, 0.79, 1.01]},
        "meta": {"record": "100"},
        "n": 2,
        "dtype": "<f4",
    }
    assert data[9 + hlen :] == bytes.fromhex("0000803f000020c0")  # 1.0f, -2.5f little-endian
    back = decode_window(data)
    assert not back.samples.flags.writeable  # zero-copy view of the message


def test_window_key() -> None:
    assert window_key("mitdb-100", 42) == b"mitdb-100:42"
    w = decode_window(encode_window(SensorWindow("cwru-106", "vibration", 12000.0, 0, 3, np.ones(4))))
    assert w.key == b"cwru-106:3"


def _frame(header: dict | bytes, payload: bytes = b"", magic: bytes = MAGIC, version: int = 1) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + bytes([version]) + struct.pack("<I", len(h)) + h + payload


def _header(**changes) -> dict:
    h = {
        "stream": "s",
        "modality": "ecg",
        "fs": 360.0,
        "t0_ns": 0,
        "seq": 0,
        "label": None,
        "features": {},
        "meta": {},
        "n": 2,
        "dtype": "<f4",
    }
    h.update(changes)
    return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()
_OK = np.array([1.0, 2.0], "<f4").tobytes()
_GOOD = _frame(_header(), _OK)


def _without(name: str) -> bytes:
    return _frame(_header(**{name: _DROP}), _OK)


MALFORMED = [
    ("empty", b"", "truncated: 0 bytes"),
    ("short prefix", b"SCIW\x01\x00", "truncated: 6 bytes"),
    ("bad magic", b"JSON" + _GOOD[4:], "bad magic b'JSON'"),
    ("unknown version", _GOOD[:4] + b"\x02" + _GOOD[5:], "unknown version 2"),
    ("truncated header", _GOOD[:20], "truncated: header length"),
    ("header not JSON", _frame(b"{not json", _OK), "header not JSON"),
    ("header not UTF-8", _frame(b"\xff\xfe{}", _OK), "header not JSON"),
    ("header NaN", _frame(json.dumps(_header(fs=float("nan"))).encode(), _OK), "non-standard constant NaN"),
    ("header is a list", _frame(b"[1, 2]", _OK), "header is not a JSON object"),
    ("missing stream", _without("stream"), "missing field 'stream'"),
    ("missing samples count", _without("n"), "missing field 'n'"),
    ("missing label", _without("label"), "missing field 'label'"),
    ("missing features", _without("features"), "missing field 'features'"),
    ("stream not str", _frame(_header(stream=5), _OK), "field 'stream' must be a string"),
    ("stream empty", _frame(_header(stream=""), _OK), "field 'stream' must not be empty"),
    ("unknown modality", _frame(_header(modality="eeg"), _OK), "unknown modality 'eeg'"),
    ("fs zero", _frame(_header(fs=0), _OK), "field 'fs' must be > 0 Hz"),
    ("fs negative", _frame(_header(fs=-360), _OK), "field 'fs' must be > 0 Hz"),
    ("fs string", _frame(_header(fs="360"), _OK), "field 'fs' must be a number"),
    ("negative seq", _frame(_header(seq=-1), _OK), "field 'seq' must be >= 0, got -1"),
    ("seq float", _frame(_header(seq=1.5), _OK), "field 'seq' must be an integer"),
    ("seq bool", _frame(_header(seq=True), _OK), "field 'seq' must be an integer"),
    ("t0 float", _frame(_header(t0_ns=1.0), _OK), "field 't0_ns' must be an integer"),
    ("label not str", _frame(_header(label=3), _OK), "field 'label' must be a string"),
    ("features not dict", _frame(_header(features=[1]), _OK), "field 'features' must be an object"),
    (
        "feature not list",
        _frame(_header(features={"rr": 1.0}), _OK),
        "feature 'rr' must be a list of numbers",
    ),
    (
        "feature strings",
        _frame(_header(features={"rr": ["a"]}), _OK),
        "feature 'rr' must be a list of numbers",
    ),
    (
        "meta not str",
        _frame(_header(meta={"a": 1}), _OK),
        "field 'meta' entry 'a': 1 is not string -> string",
    ),
    ("dtype", _frame(_header(dtype="<f8"), _OK), "invalid field 'dtype': '<f8'"),
    ("n negative", _frame(_header(n=-2), _OK), "field 'n' must be >= 0"),
    ("n too large", _frame(_header(n=3), _OK), "n mismatch: header says n=3 (12 bytes), payload has 8 bytes"),
    ("n too small", _frame(_header(n=1), _OK), "n mismatch: header says n=1 (4 bytes), payload has 8 bytes"),
    ("ragged payload", _frame(_header(n=2), _OK + b"\x00"), "n mismatch"),
    ("truncated samples", _GOOD[:-1], "n mismatch: header says n=2 (8 bytes), payload has 7 bytes"),
    ("empty samples", _frame(_header(n=0)), "empty samples"),
    (
        "nan sample",
        _frame(_header(), np.array([1.0, np.nan], "<f4").tobytes()),
        "non-finite samples at index 1",
    ),
    (
        "inf sample",
        _frame(_header(), np.array([np.inf, 1], "<f4").tobytes()),
        "non-finite samples at index 0",
    ),
    ("not bytes", "SCIW", "message must be bytes, got str"),
]


@pytest.mark.parametrize(("case", "data", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_window_reason(case: str, data: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        decode_window(data)
    assert reason in info.value.reason, (case, info.value.reason)
    assert str(info.value) == info.value.reason


def test_good_frame_of_malformed_table_decodes() -> None:
    w = decode_window(_GOOD)
    assert w.samples.tolist() == [1.0, 2.0]
    # window length is not checked here (the worker checks it against the model)
    assert decode_window(_frame(_header(n=3), np.ones(3, "<f4").tobytes())).samples.size == 3
    # unknown header keys are ignored (additive changes stay version 1)
    assert decode_window(_frame(_header(extra={"x": 1}), _OK)) == w


def test_constructor_validates_like_decoder() -> None:
    with pytest.raises(ContractError, match="unknown modality"):
        SensorWindow("s", "audio", 360.0, 0, 0, np.ones(3))
    with pytest.raises(ContractError, match="must be 1-D"):
        SensorWindow("s", "ecg", 360.0, 0, 0, np.ones((2, 3)))
    with pytest.raises(ContractError, match="feature 'rr' has non-finite values"):
        SensorWindow("s", "ecg", 360.0, 0, 0, np.ones(3), features={"rr": [float("nan")]})
    w = SensorWindow("s", "ecg", 360, 0, 0, np.arange(3, dtype=np.float64))
    assert w.samples.dtype == np.float32 and w.fs == 360.0


def random_label(rng: np.random.Generator) -> LabelMessage:
    classes = ["N", "S", "V", "F"]
    p = rng.dirichlet(np.ones(4))
    truth = None if rng.random() < 0.4 else str(rng.choice(classes))
    label = classes[int(np.argmax(p))]
    return LabelMessage(
        stream=f"mitdb-{rng.integers(100, 235)}",
        modality="ecg",
        seq=int(rng.integers(0, 10**9)),
        t0_ns=int(rng.integers(0, 2**62)),
        model="ecg-cnn-v1",
        label=label,
        probs=dict(zip(classes, p.astype(np.float32), strict=True)),  # numpy floats are accepted
        sp=float(rng.random()),
        delta_sp=float(rng.standard_normal()),
        passes=int(rng.integers(1, 64)),
        decision=str(rng.choice(["stopped", "abstained"])),
        reason=str(rng.choice(["", "sp<threshold", "max_passes"])),
        novelty=None if rng.random() < 0.3 else float(rng.exponential()),
        quality=[None, "ok", "flat", "clipped+amplitude"][int(rng.integers(4))],
        confidence=None if rng.random() < 0.3 else float(rng.random()),
        truth=truth,
        correct=None if truth is None else truth == label,
        latency_ms=float(rng.uniform(0, 500)),
        worker="worker-1",
    )


def test_output_messages_round_trip_random() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(200):
        m = random_label(rng)
        data = m.to_json()
        obj = json.loads(data)
        assert obj["v"] == 1 and b" " not in data  # compact separators
        assert LabelMessage.from_json(data) == m
        e = EscalationMessage.from_label(m)
        assert e.escalation_id == window_key(m.stream, m.seq).decode()
        assert EscalationMessage.from_json(e.to_json()) == e
        a = AlertMessage.from_label(m, str(rng.choice(["warning", "critical"])), float(rng.random()))
        assert AlertMessage.from_json(a.to_json()) == a
        assert json.loads(a.to_json())["severity"] in ("warning", "critical")


def test_label_message_json_by_hand() -> None:
    m = LabelMessage(
        stream="mitdb-100", modality="ecg", seq=3, t0_ns=10, model="m", label="N",
        probs={"N": 0.75, "V": 0.25}, sp=0.5, delta_sp=-0.125, passes=8, decision="stopped", reason="",
        truth="N", correct=True, latency_ms=12.5, worker="w",
    )  # fmt: skip
    assert m.to_json() == (
        b'{"v":1,"stream":"mitdb-100","modality":"ecg","seq":3,"t0_ns":10,"model":"m","label":"N",'
        b'"probs":{"N":0.75,"V":0.25},"sp":0.5,"delta_sp":-0.125,"passes":8,"decision":"stopped","reason":"",'
        b'"novelty":null,"quality":null,"confidence":null,"truth":"N","correct":true,"latency_ms":12.5,"worker":"w"}'
    )
    # a window the gate stopped before any pass: unfamiliar (novelty > 1), its input checks passed, no confidence
    gated = LabelMessage(
        stream="mitdb-100", modality="ecg", seq=4, t0_ns=11, model="m", label="N", probs={"N": 0.5, "V": 0.5},
        sp=0.0, delta_sp=0.85, passes=0, decision="abstained", reason="unfamiliar", novelty=3.25, quality="ok",
        confidence=None, latency_ms=1.0, worker="w", lead="MLII",
    )  # fmt: skip
    obj = json.loads(gated.to_json())
    assert (obj["reason"], obj["passes"], obj["novelty"], obj["quality"], obj["confidence"]) == (
        "unfamiliar", 0, 3.25, "ok", None)
    alert = json.loads(AlertMessage.from_label(gated, "critical", 0.45).to_json())
    assert (alert["novelty"], alert["quality"], alert["severity"], alert["threshold"]) == (3.25, "ok", "critical", 0.45)
    # messages written before these fields existed still decode (as null)
    old = {k: v for k, v in obj.items() if k not in ("novelty", "quality", "confidence")}
    assert LabelMessage.from_json(json.dumps(old)) == dataclasses.replace(gated, novelty=None, quality=None)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 2}, "unknown version 2 of LabelMessage"),
        ({"decision": "maybe"}, "unknown decision 'maybe'"),
        ({"sp": "high"}, "field 'sp' must be a number"),
        ({"passes": -1}, "field 'passes' must be >= 0"),
        ({"probs": {}}, "field 'probs' must be a non-empty object"),
        ({"correct": "yes"}, "field 'correct' must be true, false or null"),
        ({"modality": "eeg"}, "unknown modality 'eeg'"),
        ({"stream": _DROP}, "missing field 'stream'"),
        ({"novelty": "high"}, "field 'novelty' must be a number"),
        ({"confidence": True}, "field 'confidence' must be a number"),
        ({"quality": 8}, "field 'quality' must be a string"),
        ({"quality": "x" * 65}, "field 'quality' has 65 characters"),
    ],
)
def test_label_message_invalid(change: dict, reason: str) -> None:
    obj = json.loads(random_label(np.random.default_rng(1)).to_json())
    obj.update(change)
    obj = {k: v for k, v in obj.items() if v is not _DROP}
    with pytest.raises(ContractError) as info:
        LabelMessage.from_json(json.dumps(obj).encode())
    assert reason in info.value.reason
    with pytest.raises(ContractError, match="message not JSON"):
        LabelMessage.from_json(b"{")


def test_alert_and_escalation_invalid() -> None:
    m = random_label(np.random.default_rng(2))
    with pytest.raises(ContractError, match="unknown severity 'fatal'"):
        AlertMessage.from_label(m, "fatal", 0.3)
    obj = json.loads(EscalationMessage.from_label(m).to_json())
    del obj["escalation_id"]
    with pytest.raises(ContractError, match="missing field 'escalation_id'"):
        EscalationMessage.from_json(json.dumps(obj))
    fields = json.loads(m.to_json())
    del fields["v"]
    with pytest.raises(ContractError, match="field 'sp' must be finite"):
        LabelMessage(**{**fields, "sp": float("inf")})
    with pytest.raises(ContractError, match="field 'novelty' must be finite"):  # NaN is sent as null, never NaN
        LabelMessage(**{**fields, "novelty": float("nan")})


def test_dead_letter_round_trip() -> None:
    original = b"SCIW\x07garbage\xff\x00"
    data = dead_letter(original, ContractError("unknown version 7"), "sci.windows", 3, 12345, b"mitdb-100:9")
    obj = json.loads(data)
    assert obj["v"] == 1 and obj["reason"] == "unknown version 7" and obj["error_type"] == "ContractError"
    assert obj["topic"] == "sci.windows" and obj["partition"] == 3 and obj["offset"] == 12345
    assert obj["key_text"] == "mitdb-100:9"
    assert base64.b64decode(obj["original_b64"]) == original
    dl = decode_dead_letter(data)
    assert (dl.reason, dl.error_type, dl.topic, dl.partition, dl.offset) == (
        "unknown version 7",
        "ContractError",
        "sci.windows",
        3,
        12345,
    )
    assert dl.key == b"mitdb-100:9" and dl.original == original
    dl2 = decode_dead_letter(dead_letter(b"", "model rejected: length 255", "sci.windows", 0, 0, None, "Reject"))
    assert dl2.key is None and dl2.original == b"" and dl2.error_type == "Reject"
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(50):
        blob = rng.bytes(int(rng.integers(0, 2000)))
        key = rng.bytes(int(rng.integers(0, 40)))
        assert decode_dead_letter(dead_letter(blob, "x", "t", 0, 1, key)).original == blob
        assert decode_dead_letter(dead_letter(blob, "x", "t", 0, 1, key)).key == key


@pytest.mark.parametrize("kind", [k for k in POISON if k not in MODEL_REJECTED])
def test_poison_message_is_rejected_at_the_door_with_its_reason(kind: str) -> None:
    data = POISON[kind](7)
    with pytest.raises(ContractError) as info:
        decode_window(data)
    assert REASONS[kind] in info.value.reason, info.value.reason
    assert len(info.value.reason) < 300  # a reason names the problem, never echoes a huge value
    # its dead letter always fits the producer's request size
    dl = dead_letter(data, info.value, "sci.windows", 0, 1, data[:100_000])
    assert len(dl) <= DEAD_LETTER_MAX_BYTES


@pytest.mark.parametrize("kind", MODEL_REJECTED)
def test_model_rejected_poison_passes_the_contract(kind: str) -> None:
    assert decode_window(POISON[kind](3)).stream == "poison-3"


def test_bounds_are_inclusive_at_the_limits() -> None:
    hi = _frame(_header(t0_ns=TIME_MAX_NS, seq=2**63 - 1, stream="s" * 128, fs=1e7), _OK)
    w = decode_window(hi)
    assert (w.t0_ns, w.seq, len(w.stream)) == (TIME_MAX_NS, 2**63 - 1, 128)
    assert decode_window(_frame(_header(t0_ns=TIME_MIN_NS), _OK)).t0_ns == TIME_MIN_NS
    with pytest.raises(ContractError, match="must be >= -9223372036854775806"):
        decode_window(_frame(_header(t0_ns=TIME_MIN_NS - 1), _OK))
    big = np.array([MAX_ABS_SAMPLE, -MAX_ABS_SAMPLE], "<f4")
    assert decode_window(_frame(_header(), big.tobytes())).samples.tolist() == big.tolist()
    with pytest.raises(ContractError, match="sample magnitude"):
        decode_window(_frame(_header(), np.array([0, 1.01 * MAX_ABS_SAMPLE], "<f4").tobytes()))
    # the nesting limit is on the header as a whole: depth 8 passes, depth 9 does not
    deep = _header(extra=json.loads("[" * 7 + "]" * 7))
    assert json_depth(json.dumps(deep).encode()) == MAX_HEADER_DEPTH
    assert decode_window(_frame(deep, _OK)).stream == "s"
    with pytest.raises(ContractError, match="nested 9 levels deep"):
        decode_window(_frame(_header(extra=json.loads("[" * 8 + "]" * 8)), _OK))
    # brackets inside strings (with escaped quotes) do not count
    assert json_depth(b'{"a": "[[[\\"[[[", "b": {}}') == 2
    # unicode letters are allowed in stream ids, spaces and quotes are not
    assert SensorWindow("bett-ü4", "ecg", 360.0, 0, 0, np.ones(3)).stream == "bett-ü4"
    for bad in ("a b", 'a"b', "a\x00b", "a,b"):
        with pytest.raises(ContractError, match="character outside"):
            SensorWindow(bad, "ecg", 360.0, 0, 0, np.ones(3))


def test_dead_letter_of_a_huge_message_is_truncated_with_size_and_hash() -> None:
    import hashlib

    original = np.random.default_rng(1).bytes(5 * 2**20)
    data = dead_letter(original, "message too large", "sci.windows", 2, 9, b"k" * 5000, stage="decode")
    assert len(data) <= DEAD_LETTER_MAX_BYTES
    dl = decode_dead_letter(data)
    assert dl.truncated and dl.original_size == len(original)
    assert dl.original_sha256 == hashlib.sha256(original).hexdigest()
    assert len(dl.original) > 0.7 * DEAD_LETTER_MAX_BYTES and original.startswith(dl.original)
    assert dl.key == b"k" * 1024 and json.loads(data)["key_truncated"] is True
    small = decode_dead_letter(dead_letter(b"abc", "x" * 10_000, "t", 0, 0, None, stage="classify"))
    assert not small.truncated and small.original == b"abc" and small.stage == "classify"
    assert small.reason.startswith("x" * 2000) and small.reason.endswith("(10000 characters)")
    # exactly at the limit: as large as fits, never larger
    for limit in (2000, 2001, 2002, 2003):
        assert len(dead_letter(b"\xff" * 5000, "r", "t", 0, 0, None, max_bytes=limit)) <= limit
    with pytest.raises(ContractError, match="unknown stage"):
        dead_letter(b"", "r", "t", 0, 0, None, stage="elsewhere")


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_decoding_hostile_frames_raises_only_contract_errors_with_short_reasons(data) -> None:
    from fuzz_messages import expected_outcome, malformed_frame, personalize

    i = 4321
    msg = personalize(data.draw(malformed_frame()), i)
    try:
        w = decode_window(msg)
    except ContractError as e:
        assert 0 < len(e.reason) < 400
        assert expected_outcome(msg, i) == "dead"
        dl = dead_letter(msg, e, "sci.windows", 0, i, f"fz:{i}".encode())
        assert decode_dead_letter(dl).original == msg
        return
    # accepted: every bound holds, so nothing downstream can overflow or be refused by InfluxDB
    assert TIME_MIN_NS <= w.t0_ns <= TIME_MAX_NS and 0 <= w.seq < 2**63
    assert np.isfinite(w.samples).all() and np.abs(w.samples).max() <= MAX_ABS_SAMPLE
    assert w.label is None or w.label.isprintable()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**30), max_value=10**30) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _typed(x: object) -> object:
    """``x`` with every leaf's type beside it (1 == 1.0 == True would hide a parser that changes types)."""
    if isinstance(x, dict):
        return {k: _typed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_typed(v) for v in x]
    return (type(x).__name__, repr(x))


def _both_parsers(data: bytes) -> tuple[object, object]:
    """(the header parser's reading of ``data``, ``json.loads``'s with NaN/Infinity refused and only objects taken),
    each typed (:func:`_typed`) or ``"refused"``."""
    try:
        obj = json.loads(data, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        standard: object = _typed(obj) if isinstance(obj, dict) else "refused"
    except (ValueError, UnicodeDecodeError):
        standard = "refused"
    try:
        fast: object = _typed(_loads_object(data, "header", max_depth=64))
    except ContractError:
        fast = "refused"
    return fast, standard


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=5), st.booleans())
def test_header_parser_reads_exactly_what_the_standard_parser_reads(obj: dict, ascii_only: bool) -> None:
    """The fast header parser (orjson with a fallback) accepts, reads and refuses exactly what ``json.loads`` does,
    types included: big integers stay integers, NaN is refused with the same reason, lone surrogates are read."""
    data = json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    fast, standard = _both_parsers(data)
    assert fast == standard


_HEADER_SEEDS = (b'{"stream":"a","fs":360.0,"t0_ns":1795354727038093683,"seq":5,"features":{"beat":[0.8,-0.01,1e-5,2]},'
                 b'"meta":{"k":"v"},"n":3}', b'{"a":[1,2,{"b":"x\\u00e9"}],"c":null,"d":true}')
_JSON_BYTES = b'{}[]:,"\\-+.eE0123456789 \t\n\r\x00\x7f\xc3\xa9\xffabnultrsfNaIiy'


@st.composite
def _mutated_header(draw: st.DrawFn) -> bytes:
    """A real-looking header with 1-3 bytes inserted, deleted or replaced (mostly malformed JSON)."""
    data = bytearray(draw(st.sampled_from(_HEADER_SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data) - 1))
        op, byte = draw(st.sampled_from(("insert", "delete", "replace"))), draw(st.sampled_from(_JSON_BYTES))
        if op == "insert":
            data.insert(i, byte)
        elif op == "delete":
            del data[i]
        else:
            data[i] = byte
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(_mutated_header())
def test_header_parser_refuses_exactly_what_the_standard_parser_refuses(data: bytes) -> None:
    """Malformed headers: the fast parser accepts and refuses the same texts as ``json.loads``, with the same values."""
    fast, standard = _both_parsers(data)
    assert fast == standard
