"""Where models live: the GPU when one exists (or is asked for), otherwise the CPU."""

from __future__ import annotations

import torch


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` → cuda if available else cpu; ``cpu`` / ``cuda`` / ``cuda:N`` are taken as given (checked)."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(preference)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available; use SCI_DEVICE=cpu or auto")
    return dev
