"""Where models live: the GPU when one exists (or is asked for), otherwise the CPU."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` → cuda if available else cpu; ``cpu`` / ``cuda`` / ``cuda:N`` are taken as given (checked).

    A CUDA device is put in full float32 (:func:`full_float32`)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if preference == "auto" else preference)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {preference!r} requested but CUDA is not available; use SCI_DEVICE=cpu or auto")
        full_float32()
    return dev


def full_float32() -> None:
    """Turn TensorFloat-32 off for CUDA convolutions and matrix products (torch allows it for cuDNN by default).

    The cards' thresholds (novelty, SP, risk rule) were fitted in float32 on the CPU. Measured on an H100
    (2026-11-22, 1,024 DS2 beats, mitdb): with TF32 the logits moved by up to 2.3e-3 and the novelty score by 1.1e-2
    (one decision differed from the CPU's), in float32 by 2.9e-6 and 4.2e-4 (none differed), at about the same speed
    (the controller on 1024-window batches: mitdb 119k windows/s in float32 vs 116k in TF32, cwru 139k vs 149k).
    """
    # the specific settings, not torch.backends.fp32_precision: torch 2.11 kept cuDNN convolutions at TF32 under it
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


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
