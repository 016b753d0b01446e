"""Trained models on disk: ``NAME.pt`` (state dict) beside ``NAME.json`` (the model card).

The card says everything a consumer needs without reading code: dataset, split, classes, window, fs, temperature,
controller policy and thresholds, metrics (and which split they come from), seed and code version.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.architectures import ARCHITECTURES, McModel

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass
class ModelCard:
    name: str
    arch: str
    arch_params: dict[str, Any]
    dataset: str
    modality: str  # "ecg" | "vibration"
    split: str  # human-readable description of train / validation / test
    classes: list[str]
    fs: float  # Hz of the model input
    input_length: int  # samples per window
    aux: str | None  # name of side features in the message (e.g. "rr") or None
    temperature: float
    controller: dict[str, Any]  # {"policy": name, "params": {...}, "t_max": int, "sp_star": float}
    seed: int
    train: dict[str, Any] = field(default_factory=dict)  # epochs, batch size, lr, seconds, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # {"<split>": {...}}
    code_version: str = ""


def code_version() -> str:
    """``git describe`` of the working tree (with -dirty), or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(model: McModel, card: ModelCard, directory: Path = CHECKPOINT_DIR) -> Path:
    """Write NAME.pt and NAME.json into ``directory``; returns the .json path."""
    directory.mkdir(parents=True, exist_ok=True)
    card.code_version = card.code_version or code_version()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / f"{card.name}.pt")
    path = directory / f"{card.name}.json"
    path.write_text(json.dumps(asdict(card), indent=2) + "\n")
    return path


def _resolve(name_or_path: str | Path, directory: Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".json", ".pt"):
        p = p.with_suffix(".json")
    elif not p.is_absolute() and p.parent == Path("."):
        p = directory / f"{p.name}.json"
    if not p.is_file():
        known = ", ".join(available_checkpoints(directory)) or "none"
        raise FileNotFoundError(f"no checkpoint {name_or_path!r} (known: {known}); train one with `sci-monitor train`")
    return p


def load_checkpoint(name_or_path: str | Path, device: torch.device | str = "cpu",
                    directory: Path = CHECKPOINT_DIR) -> tuple[McModel, ModelCard]:
    """Model (eval mode, on ``device``) and its card."""
    path = _resolve(name_or_path, directory)
    card = ModelCard(**json.loads(path.read_text()))
    model = ARCHITECTURES[card.arch](**card.arch_params)
    model.load_state_dict(torch.load(path.with_suffix(".pt"), map_location="cpu", weights_only=True))
    return model.to(device).eval(), card


def available_checkpoints(directory: Path = CHECKPOINT_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json") if p.with_suffix(".pt").is_file())
