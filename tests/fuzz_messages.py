"""Hypothesis strategies for hostile input messages, and the oracle that says what the worker must do with each.

:func:`malformed_frame` draws a wire frame from a valid ECG window with 1-3 header fields replaced by arbitrary
JSON (huge and negative integers, floats near the float32/float64 limits, nested objects, odd strings), or with
its bytes truncated, flipped or padded. :func:`expected_outcome` is the oracle: ``"label"`` when the worker must
label the window (the contract accepts it and a served model takes its shape), ``"dead"`` otherwise. The oracle
holds the served models' input shapes (from their model cards) on purpose, so a worker that silently accepted
a wrong shape would be caught.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import strategies as st
from poison import BEAT, ECG_N, VIB_N, frame, header

from streams.contracts import ContractError, decode_window

SHAPES = {"ecg": (ECG_N, 360.0, {"beat": len(BEAT)}), "vibration": (VIB_N, 12000.0, {})}  # models/checkpoints/*.json
FIELDS = ("stream", "modality", "fs", "t0_ns", "seq", "label", "features", "meta", "n", "dtype")

_ints = st.one_of(st.integers(-(2**80), 2**80), st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**63 - 2, 2**64,
                                                                 -1, 0, 2**31, 2**53 + 1]))
_floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([3e38, 3.5e38, 1e308, -1e308, 5e-324, 1e9, 1e7, 360.0000001]))
_leaf = st.one_of(st.none(), st.booleans(), _ints, _floats, st.text(max_size=40),
                  st.sampled_from(["ecg", "vibration", "<f4", "<f8", "N", "", "a b", "x\n", "é", "\x00"]))
json_value = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.text(max_size=6), c, max_size=4)),
                          max_leaves=12)


PLACEHOLDER = "fz-0000000"  # stream id of generated frames; :func:`personalize` gives each copy its own


def stream_id(i: int) -> str:
    return f"fz-{i:07d}"


def personalize(data: bytes, i: int) -> bytes:
    """Copy ``i`` of a generated frame: the placeholder stream id replaced by one of the same length (so the
    header length and every byte offset stay as generated)."""
    return data.replace(PLACEHOLDER.encode(), stream_id(i).encode())


def valid_ecg_frame(samples: np.ndarray | None = None) -> bytes:
    x = np.full(ECG_N, 0.1, "<f4") if samples is None else samples.astype("<f4")
    return frame(header(0, stream=PLACEHOLDER, features={"beat": BEAT}), x.tobytes())


@st.composite
def malformed_frame(draw: st.DrawFn) -> bytes:
    """A hostile variant of a valid ECG frame (may turn out valid; ask :func:`expected_outcome`)."""
    how = draw(st.sampled_from(["fields", "fields", "fields", "bytes"]))
    if how == "fields":
        h: dict[str, Any] = header(0, stream=PLACEHOLDER)
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
            h[name] = draw(json_value)
        n = h["n"] if type(h["n"]) is int and 0 <= h["n"] <= 4096 else ECG_N
        payload = np.full(n, draw(st.sampled_from([0.1, -1e9, 1e9, 3e38])), "<f4").tobytes()
        return frame(json.dumps(h).encode(), payload)
    data = bytearray(valid_ecg_frame())
    op = draw(st.sampled_from(["truncate", "flip", "pad", "prefix"]))
    if op == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if op == "flip":
        pos = draw(st.integers(0, 8 + 200))  # prefix and header: where a flip changes the meaning
        data[pos] ^= draw(st.integers(1, 255))
        return bytes(data)
    if op == "pad":
        return bytes(data) + draw(st.binary(min_size=1, max_size=7))
    return draw(st.binary(min_size=0, max_size=64)) + bytes(data)


def expected_outcome(data: bytes, i: int) -> str:
    """"label" when a worker must label copy ``i`` of a frame, "dead" when it must dead-letter it, "skip" when it
    is valid but its stream id was replaced (it could collide with another window's key or InfluxDB series)."""
    try:
        w = decode_window(data)
    except ContractError:
        return "dead"
    n, fs, feats = SHAPES[w.modality]
    if w.samples.size != n or abs(w.fs - fs) > 1e-6 * fs:
        return "dead"
    if any(len(w.features.get(k, ())) != m for k, m in feats.items()):
        return "dead"
    return "label" if w.stream == stream_id(i) else "skip"
