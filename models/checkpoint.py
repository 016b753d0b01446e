"""Trained models on disk: ``NAME.pt`` (state dict) beside ``NAME.json`` (the model card).

The card says everything a consumer needs without reading code: dataset, split, classes, window, fs, temperature,
controller policy and thresholds, metrics (and which split they come from), seed and code version. The novelty
gate's density model (fitted on training features) lives beside them as ``NAME.novelty.pt`` (a dict of tensors).
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.architectures import ARCHITECTURES, McModel
from models.controller_card import ControllerCard

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
    controller: ControllerCard  # policy, budget, SP*, input checks, novelty gate, risk rule, alert levels
    seed: int
    train: dict[str, Any] = field(default_factory=dict)  # epochs, batch size, lr, seconds, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # {"<split>": {...}}
    code_version: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.controller, dict):  # straight from JSON, or written by hand
            self.controller = ControllerCard.from_dict(self.controller)


def code_version(here: Path = Path(__file__).parent, checkpoints: Path = CHECKPOINT_DIR) -> str:
    """``git describe`` of the checkout holding ``here``, "-dirty" when tracked files outside ``checkpoints`` differ
    from it (so training several models in one run does not mark the later ones dirty), or "unknown" outside a git
    checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        described = git("describe", "--always")
        if not described:
            return "unknown"
        top = git("rev-parse", "--show-toplevel")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                      f":(top,exclude){checkpoints.resolve().relative_to(Path(top).resolve())}")
        return described + ("-dirty" if changed else "")
    except (OSError, ValueError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(model: McModel, card: ModelCard, directory: Path = CHECKPOINT_DIR) -> Path:
    """Write NAME.pt and NAME.json into ``directory``; returns the .json path."""
    directory.mkdir(parents=True, exist_ok=True)
    card.code_version = card.code_version or code_version()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / f"{card.name}.pt")
    return save_card(card, directory)


def save_card(card: ModelCard, directory: Path = CHECKPOINT_DIR) -> Path:
    """Write NAME.json only (after recalibrating existing weights); returns its path."""
    path = directory / f"{card.name}.json"
    path.write_text(json.dumps(asdict(card), indent=2) + "\n")
    return path


def fold_path(card_name: str, index: int, directory: Path = CHECKPOINT_DIR) -> Path:
    """Where the ``index``-th (from 1) cross-fitted model of checkpoint ``card_name`` is stored."""
    return directory / "folds" / f"{card_name}.{index}.pt"


def save_fold_model(model: McModel, card_name: str, index: int, held_out: tuple[str, ...], seed: int,
                    directory: Path = CHECKPOINT_DIR) -> Path:
    """Store a cross-fitted model: its weights, architecture, training seed and the records it never saw."""
    path = fold_path(card_name, index, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"held_out": list(held_out), "seed": seed, "arch": model.arch, "arch_params": dict(model.arch_params),
                "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
    return path


def load_fold_model(card_name: str, index: int, held_out: tuple[str, ...], seed: int,
                    device: torch.device | str = "cpu", directory: Path = CHECKPOINT_DIR) -> McModel | None:
    """The stored cross-fitted model (eval mode, on ``device``), or None when there is none for these held-out
    records and seed."""
    path = fold_path(card_name, index, directory)
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["held_out"] != list(held_out) or saved["seed"] != seed:
        return None
    model = ARCHITECTURES[saved["arch"]](**saved["arch_params"])
    model.load_state_dict(saved["state"])
    return model.to(device).eval()


def _card_from_json(path: Path) -> ModelCard:
    return ModelCard(**json.loads(path.read_text()))


def density_path(card_name: str, directory: Path = CHECKPOINT_DIR) -> Path:
    return directory / f"{card_name}.novelty.pt"


def save_density(card_name: str, state: dict[str, Any], directory: Path = CHECKPOINT_DIR) -> Path:
    """Store the novelty model's tensors (and its method name) beside the checkpoint, gzip-compressed: a kNN bank
    of ReLU trunk features is mostly zeros (mitdb: 63 %, 5.8 → 2.4 MB), and compression keeps it bit-exact."""
    path = density_path(card_name, directory)
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))
    return path


def load_density(card_name: str, directory: Path = CHECKPOINT_DIR) -> dict[str, Any] | None:
    """The stored novelty model state (gzip-compressed or plain), or None when the checkpoint has none."""
    path = density_path(card_name, directory)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic
        data = gzip.decompress(data)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


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


def checkpoint_dir_of(name_or_path: str | Path, directory: Path = CHECKPOINT_DIR) -> Path:
    """The directory holding the checkpoint named (or pointed to) by ``name_or_path``."""
    return _resolve(name_or_path, directory).parent


def load_checkpoint(name_or_path: str | Path, device: torch.device | str = "cpu",
                    directory: Path = CHECKPOINT_DIR) -> tuple[McModel, ModelCard]:
    """Model (eval mode, on ``device``) and its card."""
    path = _resolve(name_or_path, directory)
    card = _card_from_json(path)
    model = ARCHITECTURES[card.arch](**card.arch_params)
    model.load_state_dict(torch.load(path.with_suffix(".pt"), map_location="cpu", weights_only=True))
    return model.to(device).eval(), card


def available_checkpoints(directory: Path = CHECKPOINT_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json") if p.with_suffix(".pt").is_file())
