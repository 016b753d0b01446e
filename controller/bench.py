"""`sci-monitor bench controller`: windows/s of the SCI controller against one deterministic pass, fixed-T and a
per-window loop, on real test windows of committed checkpoints (a benchmark that prints JSON, not a timed test).

For each model and batch size every method classifies the same windows (an evenly strided sample of the test split,
tiled when the split is smaller) with the same keys, thread settings and device, best of ``repeats`` runs:

- ``deterministic``: one plain forward pass (dropout off), probabilities to the host — the floor;
- ``fixed_t``: trunk once (in the controller's trunk calls), all t_max keyed head passes in one call, mean logits —
  the usual MC-dropout baseline;
- ``sci_<policy>``: the batched controller (``SciController.classify``) with each candidate policy of the card;
- ``per_window_loop``: one window at a time, the full model per pass and one host sync per pass, the way the paper's
  reference scripts run (same stop rule and keys, so the same decisions); measured at batch 1 only.

Rates are windows per wall-clock second (``windows_per_s``, ``ratios``) and per second of this process's CPU time
(``windows_per_cpu_s``, ``ratios_cpu``: steadier on a shared machine). Ratios are cost ratios of time per window:
``sci_cost_over_deterministic`` (goal ≤ 1.5 at the worker's batch and at 1024), ``fixed_t_cost_over_sci``, and
``sci_speedup_over_per_window_loop`` (goal ≥ 30 on paper-bearings).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from controller.calibration import decider_from_card, policies_from
from controller.engine import run_sci
from controller.evaluation import TEST_KEY_OFFSET
from controller.passes import eval_keys
from controller.sci import SciController
from models.checkpoint import load_checkpoint
from models.keyed_dropout import PassNoise
from models.recipes import get_recipe

MODELS = ("mitdb", "cwru", "paper-bearings")
BATCH_SIZES = (1, 64, 1024)


def _best_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, process CPU) seconds of each callable; they take turns (round robin) so a busy machine hits all
    alike. CPU time counts every thread of this process: on a shared machine it is the steadier of the two."""
    for fn in fns.values():
        fn()  # warm-up (allocator, lazily built mask banks)
    best = dict.fromkeys(fns, (float("inf"), float("inf")))
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def _sample(x: np.ndarray, aux: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """n windows evenly strided over the split (tiled when the split has fewer)."""
    pick = np.arange(n) % len(x) if n > len(x) else np.linspace(0, len(x) - 1, n).astype(np.int64)
    return x[pick].astype(np.float32), None if aux is None else aux[pick].astype(np.float32)


def bench_model(name: str, batch_sizes: Sequence[int] = BATCH_SIZES, windows: int = 1024, loop_windows: int = 128,
                repeats: int = 3, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Benchmark one checkpoint; ``windows`` per batch size > 1, ``loop_windows`` for batch 1 and the loop."""
    dev = torch.device(device)
    model, card = load_checkpoint(name, dev)
    decider = decider_from_card(card)
    policy, cfg = decider.policy, decider.config
    policies = policies_from(card.controller.spec.candidates)
    test = get_recipe(name).load(card.seed).test
    x_all, aux_all = _sample(test.x, test.aux, max(windows, loop_windows))
    keys_all = eval_keys(len(x_all), TEST_KEY_OFFSET)
    # the live controller (input checks, novelty gate, card's policy, risk rule) and each candidate policy alone
    ctrls = {"sci_controller": SciController.from_card(model, card, dev),
             **{f"sci_{p}": SciController(model, pol, cfg, dev) for p, pol in policies.items()}}
    base = ctrls["sci_controller"]

    def to_dev(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, device=dev)

    @torch.inference_mode()
    def deterministic(x: np.ndarray, aux: np.ndarray | None, keys: torch.Tensor) -> np.ndarray:
        z = base.deterministic_logits(x, aux)
        return torch.softmax(z / cfg.temperature, dim=1).cpu().numpy()

    @torch.inference_mode()
    def fixed_t(x: np.ndarray, aux: np.ndarray | None, keys: torch.Tensor) -> np.ndarray:
        h = base.trunk(x, aux)
        n, t = h.shape[0], cfg.t_max
        rows = torch.arange(n, device=dev).repeat(t)
        steps = torch.arange(1, t + 1, device=dev).repeat_interleave(n)
        z = model.head(h[rows], PassNoise(keys.to(dev)[rows], steps)).view(t, n, -1).mean(0)
        return torch.softmax(z / cfg.temperature, dim=1).cpu().numpy()

    def sci(ctrl: SciController) -> Callable:
        return lambda x, aux, keys: ctrl.classify(x, aux, keys)

    @torch.inference_mode()
    def per_window_loop(x: np.ndarray, aux: np.ndarray | None, keys: torch.Tensor) -> list:
        out = []
        for i in range(len(x)):
            xi, ai, ki = to_dev(x[i : i + 1]), to_dev(None if aux is None else aux[i : i + 1]), keys[i : i + 1]
            ki = ki.to(dev)

            def full_pass(idx: torch.Tensor, t: int | torch.Tensor, xi=xi, ai=ai, ki=ki) -> torch.Tensor:
                return model(xi, ai, PassNoise(ki, t))

            out.append(run_sci(full_pass, 1, len(card.classes), policy, cfg, dev, block_rows=1))
        return out

    methods: dict[str, Callable] = {"deterministic": deterministic, "fixed_t": fixed_t,
                                    **{k: sci(c) for k, c in ctrls.items()}}
    wps: dict[str, dict[str, float]] = {m: {} for m in methods}
    cpu_wps: dict[str, dict[str, float]] = {m: {} for m in methods}
    loop_wps = loop_cpu_wps = float("nan")
    for b in sorted(set(batch_sizes) | {1}):
        n = loop_windows if b == 1 else windows
        batches = [(x_all[i : i + b], None if aux_all is None else aux_all[i : i + b], keys_all[i : i + b])
                   for i in range(0, n - b + 1, b)]
        runs = {m: (lambda fn=fn, batches=batches: [fn(*bt) for bt in batches]) for m, fn in methods.items()}
        if b == 1:  # the per-window loop takes its turns with the batch-1 methods
            loop_in = (x_all[:n], None if aux_all is None else aux_all[:n], keys_all[:n])
            runs["per_window_loop"] = lambda loop_in=loop_in: per_window_loop(*loop_in)
        secs = _best_seconds(runs, repeats)
        if b == 1:
            wall, cpu = secs.pop("per_window_loop")
            loop_wps, loop_cpu_wps = n / wall, n / cpu
        if b in batch_sizes:
            for m, (wall, cpu) in secs.items():
                wps[m][str(b)], cpu_wps[m][str(b)] = len(batches) * b / wall, len(batches) * b / cpu
    default = "sci_controller"

    def ratios(w: dict[str, dict[str, float]], loop: float) -> dict[str, dict[str, Any]]:
        return {str(b): {
            "sci_cost_over_deterministic": w["deterministic"][str(b)] / w[default][str(b)],
            "fixed_t_cost_over_sci": w[default][str(b)] / w["fixed_t"][str(b)],
            "sci_speedup_over_per_window_loop": w[default][str(b)] / loop,
            "per_policy_cost_over_deterministic": {k: w["deterministic"][str(b)] / w[k][str(b)] for k in ctrls},
        } for b in batch_sizes}

    mean_passes = {k: float(c.classify(x_all[:windows], aux_all if aux_all is None else aux_all[:windows],
                                       keys_all[:windows]).passes.mean()) for k, c in ctrls.items()}
    return {"split": f"test: {card.split}", "windows": windows, "loop_windows": loop_windows,
            "controller": default, "card_policy": f"sci_{card.controller.policy.name}", "t_max": cfg.t_max,
            "windows_per_s": {**wps, "per_window_loop": loop_wps}, "ratios": ratios(wps, loop_wps),
            "windows_per_cpu_s": {**cpu_wps, "per_window_loop": loop_cpu_wps},
            "ratios_cpu": ratios(cpu_wps, loop_cpu_wps), "mean_passes": mean_passes}


def bench_controller(models: Sequence[str] = MODELS, batch_sizes: Sequence[int] = BATCH_SIZES, windows: int = 1024,
                     loop_windows: int = 128, repeats: int = 3, device: torch.device | str = "cpu",
                     log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The whole controller benchmark: per model, windows/s per method and batch size, ratios, mean passes."""
    result: dict[str, Any] = {
        "benchmark": "controller",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": str(torch.device(device)),
                    **({"gpu": torch.cuda.get_device_name(torch.device(device))}
                       if torch.device(device).type == "cuda" else {})},
        "settings": {"batch_sizes": list(batch_sizes), "windows": windows, "loop_windows": loop_windows,
                     "repeats": repeats, "timing": "best of repeats (methods take turns), after one warm-up run"},
        "models": {},
    }
    for name in models:
        log(f"[bench] {name} ...")
        result["models"][name] = r = bench_model(name, batch_sizes, windows, loop_windows, repeats, device)
        log(f"[bench] {name} (CPU time): " + ", ".join(
            f"batch {b}: SCI/det {v['sci_cost_over_deterministic']:.2f}×, "
            f"SCI/loop {v['sci_speedup_over_per_window_loop']:.1f}×" for b, v in r["ratios_cpu"].items()))
    return result
