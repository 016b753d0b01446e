"""Smoke runs of the benchmarks with tiny sizes: they run and write their keys (how fast is the benchmarks' job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from streams.bench import process_cpu_s


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sci_monitor", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_controller_bench_writes_its_keys(tmp_path):
    out = tmp_path / "controller.json"
    r = cli("bench", "controller", "--models", "paper-bearings", "--batch-sizes", "1", "4", "--windows", "8",
            "--loop-windows", "3", "--repeats", "1", "--threads", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch_threads"] == 1
    m = result["models"]["paper-bearings"]
    methods = {"deterministic", "fixed_t", "sci_controller", "sci_paper", "sci_threshold", "sci_bound"}
    assert set(m["windows_per_s"]) == methods | {"per_window_loop"}
    for method in methods:
        assert set(m["windows_per_s"][method]) == {"1", "4"}
        assert all(v > 0 for v in m["windows_per_s"][method].values())
    assert m["windows_per_s"]["per_window_loop"] > 0
    for ratios in m["ratios"].values():
        assert {"sci_cost_over_deterministic", "fixed_t_cost_over_sci",
                "sci_speedup_over_per_window_loop"} <= set(ratios)
    assert m["controller"] == "sci_controller" and m["card_policy"] == "sci_paper"  # the paper recipe pins it
    assert all(0 <= v <= 25 for v in m["mean_passes"].values())  # gated windows spend no pass


@pytest.mark.integration
def test_pipeline_bench_writes_its_keys(tmp_path):
    out = tmp_path / "pipeline.json"
    r = cli("bench", "pipeline", "--windows", "200", "--latency-seconds", "2", "--workers", "2",
            "--batch-timeout", "0.04", "--json", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["workers"] == 2  # two worker processes in one consumer group
    assert result["settings"]["batch_timeout_s"] == 0.04 and result["settings"]["fetch_wait_s"] == 0.05  # default
    assert result["passthrough_windows_per_s"] > 0 and result["pipeline_windows_per_s"] > 0
    assert set(result["latency_ms"]) == {"p50", "p95", "p99"}
    assert 0 <= result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"]
    # a window is decided before its outputs are stored and published (1 ms: record timestamps are whole ms)
    for q in ("p50", "p95", "p99"):
        assert 0 <= result["latency_decision_ms"][q] <= result["latency_ms"][q] + 1.0, result
    # every window of both phases was stored
    assert result["influx_points_throughput"] == 200
    assert result["pipeline_cpu_ms_per_window"] > 0  # the workers' CPU time while draining, per window
    assert result["influx_points_latency"] == result["latency_windows"] > 0
    # the workers' garbage-collection pauses while they drained and while paced, from their /metrics (a phase this
    # short may see none: objects freed by reference counting never trigger a collection)
    for phase in ("gc_pauses_throughput", "gc_pauses_latency"):
        assert set(result[phase]) == {"0", "1", "2"}, result[phase]
        assert all(v >= 0 for g in result[phase].values() for v in g.values()), result[phase]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_process_cpu_seconds_agree_with_the_process_clock():
    """The pipeline bench's per-window CPU cost reads /proc; it must agree with Python's own process clock."""
    before, clock = process_cpu_s(os.getpid()), time.process_time()
    while time.process_time() - clock < 0.3:  # burn 0.3 s of CPU
        sum(i * i for i in range(10_000))
    spent = time.process_time() - clock
    assert process_cpu_s(os.getpid()) - before == pytest.approx(spent, abs=0.05)
