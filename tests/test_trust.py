"""Online trust metrics (streams/trust.py): the rolling metrics against scikit-learn and hand-computed values, ADWIN
drift on a stream that shifts mid-way, and the line protocol the worker stores."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from streams.settings import load_settings
from streams.trust import Observation, TrustMonitor, calibration_bins, drift_line, window_metrics


def _obs(rng: np.random.Generator, n: int, stream: str = "s1", sp_mean: float = 0.8, t0: float = 0.0,
         truth: bool = True, novelty: float | None = None) -> list[Observation]:
    sp = np.clip(rng.normal(sp_mean, 0.05, n), 0, 1)
    correct = rng.random(n) < sp  # errors where SP is low: a useful confidence
    return [Observation(stream, "ecg", i, t0 + 0.5 * i, float(sp[i]), int(rng.integers(3, 26)), bool(sp[i] < 0.6),
                        bool(sp[i] < 0.7), float(0.5 + sp[i] / 2), bool(correct[i]) if truth else None,
                        None if novelty is None else float(rng.normal(novelty, 0.1)))
            for i in range(n)]


def test_window_metrics_match_sklearn_and_hand_computed_values():
    obs = _obs(np.random.default_rng(0), 400)
    m = window_metrics(obs, ece_bins=10)
    sp = np.array([o.sp for o in obs])
    ok = np.array([o.correct for o in obs])
    conf = np.array([o.max_prob for o in obs])
    passes = np.array([o.passes for o in obs])
    assert m["n"] == m["n_truth"] == 400
    assert m["accuracy"] == pytest.approx(ok.mean())
    assert m["auroc"] == pytest.approx(roc_auc_score(~ok, 1 - sp))
    assert m["passes_wrong"] == pytest.approx(passes[~ok].mean()) and m["passes_right"] == pytest.approx(
        passes[ok].mean())
    assert m["abstain_rate"] == pytest.approx((sp < 0.6).mean()) and m["alert_rate"] == pytest.approx((sp < 0.7).mean())
    assert m["windows_per_s"] == pytest.approx(2.0)  # one window per 0.5 s
    # ECE by hand: bins (0.0, 0.1], ..., (0.9, 1.0]
    idx = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)
    hand = sum(abs(ok[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum() for b in range(10)
               if (idx == b).any()) / len(obs)
    assert m["ece"] == pytest.approx(hand)
    bins = calibration_bins(obs, 10)
    assert sum(b["n"] for b in bins) == 400
    assert sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / 400 == pytest.approx(hand)


def test_window_metrics_without_truth_or_with_one_class():
    rng = np.random.default_rng(1)
    m = window_metrics(_obs(rng, 50, truth=False))
    assert {"accuracy", "auroc", "ece", "n_truth"}.isdisjoint(m) and m["n"] == 50
    allright = [dataclasses.replace(o, correct=True) for o in _obs(rng, 50)]
    m = window_metrics(allright)
    assert m["accuracy"] == 1.0 and "auroc" not in m and "passes_wrong" not in m
    assert window_metrics([]) == {}


def test_adwin_flags_a_stream_whose_inputs_shift_mid_way_and_only_that_stream():
    s = dataclasses.replace(load_settings(env={}), trust_window=200)
    mon = TrustMonitor(s, clock=lambda: 1000.0)
    rng = np.random.default_rng(2)
    before = mon.observe(_obs(rng, 600, "shift", 0.85, novelty=1.0) + _obs(rng, 600, "steady", 0.85, novelty=1.0))
    assert before == []  # no false alarm on stationary input
    shifted = [dataclasses.replace(o, seq=600 + o.seq) for o in _obs(rng, 600, "shift", 0.45, novelty=4.0)]
    events = mon.observe(shifted + _obs(rng, 600, "steady", 0.85, t0=300, novelty=1.0))
    assert events and {e.stream for e in events} == {"shift"}
    by_signal = {e.signal: e for e in reversed(events)}  # the first detection of each signal
    assert set(by_signal) == {"sp", "novelty"}
    sp = by_signal["sp"]
    assert 600 <= sp.seq < 700, "detected within 100 windows of the shift"
    assert sp.mean_before > 0.7 and sp.mean_after < sp.mean_before
    assert by_signal["novelty"].mean_after > by_signal["novelty"].mean_before
    line = drift_line(sp)
    assert line.startswith("sci_drift,modality=ecg,signal=sp,stream=shift drift=1i,")
    assert f"seq={sp.seq}i" in line


def test_redelivered_windows_count_once():
    s = dataclasses.replace(load_settings(env={}), trust_window=50)
    mon = TrustMonitor(s, clock=lambda: 0.0)
    obs = _obs(np.random.default_rng(4), 80)
    mon.observe(obs[:60])
    mon.observe(obs[40:70])  # 40..59 again (a redelivered batch), then 60..69
    assert mon.duplicates == 20 and [o.seq for o in mon.streams["s1"].recent] == list(range(20, 70))
    assert len(mon.fleet) == 50 and window_metrics(mon.fleet)["n"] == 50


def test_snapshot_lines_cover_fleet_streams_and_calibration():
    s = dataclasses.replace(load_settings(env={}), trust_window=100)
    mon = TrustMonitor(s, clock=lambda: 1234.5)
    rng = np.random.default_rng(3)
    mon.observe(_obs(rng, 150, "a", novelty=2.0) + _obs(rng, 30, "b", truth=False))
    lines = mon.snapshot_lines()
    fleet = [line for line in lines if line.startswith("sci_trust,modality=all,scope=fleet,stream=all ")]
    per = [line for line in lines if line.startswith("sci_trust,modality=ecg,scope=stream,stream=")]
    assert len(fleet) == 1 and len(per) == 2
    assert "n=100i" in fleet[0] and "accuracy=" in fleet[0] and all(line.endswith(" 1234500000000") for line in lines)
    b_line = next(line for line in per if "stream=b " in line)
    assert "accuracy=" not in b_line and "novelty_mean=" not in b_line  # b: no ground truth, no novelty score
    a_mean = float(re.search(r"novelty_mean=([0-9.]+)", next(line for line in per if "stream=a " in line))[1])
    assert a_mean == pytest.approx(2.0, abs=0.05)
    assert any(line.startswith("sci_calibration,bin=") for line in lines)
    assert mon.snapshot_lines() == []  # nothing new: no repeated points
    mon.observe([dataclasses.replace(o, seq=100 + o.seq) for o in _obs(rng, 5, "b", truth=False)])
    again = [line for line in mon.snapshot_lines() if line.startswith("sci_trust,")]
    assert len(again) == 2 and {line.split(" ")[0].split("stream=")[1] for line in again} == {"all", "b"}
