"""Where models live: the GPU when one exists (or is asked for), otherwise the CPU."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` → cuda if available else cpu; ``cpu`` / ``cuda`` / ``cuda:N`` are taken as given (checked)."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(preference)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available; use SCI_DEVICE=cpu or auto")
    return dev


def worker_threads(cpu_count: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """Torch intra-op threads for one worker process: ``OMP_NUM_THREADS`` when set, else half the cores (≥ 1).

    The worker's event loop, its output/sink threads and the OS need the other cores. Measured on the 2-core machine
    (busy with other jobs): the runtime classified 64-window batches about 8× faster with 1 thread than with 2.

    >>> worker_threads(2, {}), worker_threads(16, {}), worker_threads(16, {"OMP_NUM_THREADS": "3"})
    (1, 8, 3)
    """
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS", "").strip().isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return int(env["OMP_NUM_THREADS"])
    return max(1, (cpu_count or os.cpu_count() or 2) // 2)
