"""Poison messages for the input topic: every kind seen in the hostile-operator runs of issue 8, plus more.

``POISON[name](i)`` builds message ``i`` of a kind (unique stream ids, so tests can count); ``REASONS[name]`` is a
substring of the reason its dead letter must carry. Shared by the contract unit tests and the fuzz/fault tests
against the real stack.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np

from streams.contracts import MAGIC, SensorWindow, encode_window

ECG_N, VIB_N = 256, 1024
# the ECG contract's per-beat side features (models/data/mitdb.py BEAT_AUX = 9 RR + 3 morphology + 256 template)
BEAT = [0.8, 0.8, 0.8, 1.0, 0.8, 1.0, 1.0, 1.0, 0.02, 1.0, 1.0, 0.0] + [0.0] * 256


def frame(header: dict | bytes, payload: bytes) -> bytes:
    """Wire frame v1 around any header (dict or raw bytes) and payload."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + b"\x01" + struct.pack("<I", len(h)) + h + payload


def header(i: int, **changes) -> dict:
    """A valid ECG header for ``n = 256`` samples; ``changes`` override fields."""
    h = {"stream": f"poison-{i}", "modality": "ecg", "fs": 360.0, "t0_ns": 1_700_000_000_000_000_000 + i,
         "seq": i, "label": None, "features": {"beat": BEAT}, "meta": {}, "n": ECG_N, "dtype": "<f4"}
    h.update(changes)
    return h


def ecg_payload(value: float = 0.1) -> bytes:
    return np.full(ECG_N, value, "<f4").tobytes()


def _nested(depth: int) -> bytes:
    return frame(b'{"stream":"poison","x":' + b"[" * depth + b"]" * depth + b"}", ecg_payload())


def _random(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


POISON: dict[str, Callable[[int], bytes]] = {
    # issue 8, as reported
    "nested_header": lambda i: _nested(30_000),
    "seq_2_70": lambda i: frame(header(i, seq=2**70), ecg_payload()),
    "t0_2_70": lambda i: frame(header(i, t0_ns=2**70), ecg_payload()),
    "samples_3e38": lambda i: frame(header(i), ecg_payload(3e38)),
    "random_900kb": lambda i: _random(900_000, i),
    "message_5mb": lambda i: frame(header(i, n=5 * 2**20 // 4), np.zeros(5 * 2**20 // 4, "<f4").tobytes()),
    "t0_int64_max": lambda i: frame(header(i, t0_ns=2**63 - 1), ecg_payload()),
    "stream_70k": lambda i: frame(header(i, stream="s" * 70_000), ecg_payload()),
    # found since
    "nested_features": lambda i: frame(header(i, features={"beat": [[[[[[[[[1.0]]]]]]]]]}), ecg_payload()),
    "int_5000_digits": lambda i: frame(json.dumps(header(i)).replace('"seq": ' + str(i), '"seq": ' + "9" * 5000)
                                       .encode(), ecg_payload()),
    "fs_overflow": lambda i: frame(json.dumps(header(i)).replace('"fs": 360.0', '"fs": 1e400').encode(),
                                   ecg_payload()),
    "header_length_4gb": lambda i: MAGIC + b"\x01" + struct.pack("<I", 2**32 - 1) + b"{}",
    "n_2_62": lambda i: frame(header(i, n=2**62), ecg_payload()),
    "stream_1000": lambda i: frame(header(i, stream="s" * 1000), ecg_payload()),
    "stream_newline": lambda i: frame(header(i, stream=f"poison-{i}\nsci_window,stream=x sp=1"), ecg_payload()),
    "stream_space": lambda i: frame(header(i, stream=f"poison {i}"), ecg_payload()),
    "label_huge": lambda i: frame(header(i, label="N" * 10_000), ecg_payload()),
    "meta_many": lambda i: frame(header(i, meta={f"k{j}": "v" for j in range(1000)}), ecg_payload()),
    "feature_huge": lambda i: frame(header(i, features={"beat": [1e300, *BEAT[1:]]}), ecg_payload()),
    "samples_1e20": lambda i: frame(header(i), ecg_payload(1e20)),
    "fs_1e12": lambda i: frame(header(i, fs=1e12), ecg_payload()),
    "empty": lambda i: b"",
    "wrong_length": lambda i: encode_window(SensorWindow(f"poison-{i}", "ecg", 360.0, 0, i, np.zeros(100, np.float32),
                                                         features={"beat": BEAT})),
    "wrong_fs": lambda i: encode_window(SensorWindow(f"poison-{i}", "vibration", 48000.0, 0, i,
                                                     np.zeros(VIB_N, np.float32))),
    "missing_beat": lambda i: encode_window(SensorWindow(f"poison-{i}", "ecg", 360.0, 0, i,
                                                         np.zeros(ECG_N, np.float32))),
}

REASONS: dict[str, str] = {
    "nested_header": "header nested 30001 levels deep, at most 8 allowed",
    "seq_2_70": "field 'seq' must be <= 9223372036854775807",
    "t0_2_70": "field 't0_ns' must be <= 9223372036854775806",
    "samples_3e38": "sample magnitude 3e+38",
    "random_900kb": "bad magic",
    "message_5mb": "exceeds the limit of 1048576 bytes",
    "t0_int64_max": "field 't0_ns' must be <= 9223372036854775806, got 9223372036854775807",
    "stream_70k": "exceeds the limit of 65536 bytes",
    "stream_1000": "field 'stream' has 1000 characters, at most 128 allowed",
    "nested_features": "header nested 11 levels deep",
    "int_5000_digits": "header not JSON",
    "fs_overflow": "field 'fs' must be finite",
    "header_length_4gb": "header length 4294967295 exceeds the limit",
    "n_2_62": "field 'n' must be <=",
    "stream_newline": "field 'stream' has a character outside",
    "stream_space": "field 'stream' has a character outside",
    "label_huge": "field 'label' has 10000 characters, at most 64 allowed",
    "meta_many": "field 'meta' has 1000 entries",
    "feature_huge": "feature 'beat' has a value of magnitude > 1e+09",
    "samples_1e20": "sample magnitude 1e+20",
    "fs_1e12": "field 'fs' must be > 0 Hz and <= 1e+07 Hz",
    "empty": "truncated: 0 bytes",
    "wrong_length": "needs 256 samples, got 100",
    "wrong_fs": "needs fs = 12000 Hz",
    "missing_beat": "needs features['beat']",
}

# rejected by the models' checks in the worker, not by the contract
MODEL_REJECTED = ("wrong_length", "wrong_fs", "missing_beat")
