"""The modality registry: what a modality is, in one place, for contracts, runtime, replay, CLI and demo.

A :class:`ModalitySpec` says which checkpoint serves each of its leads, which side features its models need, the
lead a window without one is assumed to come from, and where `sci-monitor replay` finds its recordings. Adding a
modality (say EEG) is one :func:`register` call plus its data loader and training recipe; nothing in ``streams/``
needs editing. This module imports nothing heavy (no numpy, no torch): the CLI reads it to build its choices.

>>> spec = get("ecg")
>>> spec.default_lead, spec.checkpoints["MLII"], spec.feature_key
('MLII', 'mitdb', 'beat')
>>> spec.lead_of(None), spec.lead_of("V1")
('MLII', 'V1')
>>> default_models()[("vibration", "DE")]
'cwru'
>>> parse_models("ecg:MLII=mitdb, vibration=cwru-loadshift")
{('ecg', 'MLII'): 'mitdb', ('vibration', 'DE'): 'cwru-loadshift'}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModalitySpec", "default_models", "file_modalities", "get", "names", "parse_models", "register",
           "replay_datasets", "unregister"]

ModelKey = tuple[str, str]  # (modality, lead)


@dataclass(frozen=True)
class ModalitySpec:
    """One kind of sensor stream.

    ``checkpoints``: lead -> checkpoint name served by default (the ``models`` setting overrides it);
    ``default_lead``: the lead of a window whose header has none; ``feature_key``: the ``features[...]`` entry its
    models need (None: samples only); ``replay_dataset`` / ``replay_source`` / ``replay_recordings``: the
    ``sci-monitor replay --dataset`` name, a ``"module:function"`` yielding :class:`~streams.contracts.SensorWindow`
    for ``function(recording, start_ns=..., root=...)`` (imported only when used) and the recordings replayed by
    default; ``file_source``: a ``"module:function"`` yielding the windows of a user's own recording file for
    ``function(path, start_ns=..., fs=..., channel=..., lead=...)``, which reads the file when called so that a bad
    file fails before anything is sent (``sci-monitor replay --files``); ``check``: an optional extra input check,
    ``check(window) -> reason or None`` (a reason makes the window a dead letter).
    """

    name: str
    default_lead: str
    checkpoints: Mapping[str, str]
    feature_key: str | None = None
    replay_dataset: str | None = None
    replay_source: str | None = None
    replay_recordings: tuple[str, ...] = ()
    file_source: str | None = None
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"modality name must be an identifier, got {self.name!r}")
        if not self.default_lead:
            raise ValueError(f"modality {self.name}: default_lead must not be empty")
        if (self.replay_dataset is None) != (self.replay_source is None):
            raise ValueError(f"modality {self.name}: give both replay_dataset and replay_source, or neither")

    def lead_of(self, lead: str | None) -> str:
        """The lead a window is routed by: its own, or this modality's default."""
        return lead or self.default_lead

    def replay_windows(self, recording: str, *, start_ns: int, root: Any = None) -> Iterator[Any]:
        """The windows of one recording from this modality's replay source."""
        if self.replay_source is None:
            raise ValueError(f"modality {self.name} has no replay source")
        return _resolve(self.replay_source)(recording, start_ns=start_ns, root=root)

    def file_windows(self, path: str, *, start_ns: int, fs: float | None = None, channel: str | None = None,
                     lead: str | None = None, unit: str | None = None) -> Iterator[Any]:
        """The windows of a user's recording file (at ``fs`` Hz and in ``unit`` when the file does not say;
        ``channel``: the lead or variable to read; ``lead``: the lead to announce) from this modality's file
        source."""
        if self.file_source is None:
            raise ValueError(f"modality {self.name} cannot replay files")
        return _resolve(self.file_source)(path, start_ns=start_ns, fs=fs, channel=channel, lead=lead, unit=unit)


def _resolve(target: str) -> Callable[..., Any]:
    """The function named ``"module:function"`` (imported now)."""
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


_REGISTRY: dict[str, ModalitySpec] = {}


def register(spec: ModalitySpec, *, replace: bool = False) -> ModalitySpec:
    """Add ``spec`` to the registry (``replace`` to redefine a name); returns it."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"modality {spec.name!r} is already registered")
    taken = {s.replay_dataset: s.name for s in _REGISTRY.values() if s.replay_dataset and s.name != spec.name}
    if spec.replay_dataset in taken:
        raise ValueError(f"replay dataset {spec.replay_dataset!r} already belongs to {taken[spec.replay_dataset]}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a modality (tests that register toy ones clean up with this)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> ModalitySpec:
    """The spec of modality ``name``; ``KeyError`` naming the known ones when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """Registered modality names, in registration order."""
    return tuple(_REGISTRY)


def replay_datasets() -> dict[str, ModalitySpec]:
    """``sci-monitor replay --dataset`` name -> spec."""
    return {s.replay_dataset: s for s in _REGISTRY.values() if s.replay_dataset}


def file_modalities() -> tuple[str, ...]:
    """Modalities whose users' own recording files `sci-monitor replay --files` can stream."""
    return tuple(s.name for s in _REGISTRY.values() if s.file_source)


def default_models() -> dict[ModelKey, str]:
    """(modality, lead) -> checkpoint name, from every registered spec."""
    return {(s.name, lead): ckpt for s in _REGISTRY.values() for lead, ckpt in s.checkpoints.items()}


def parse_models(text: str) -> dict[ModelKey, str]:
    """Parse the ``models`` setting: ``"modality[:lead]=checkpoint, ..."`` (no lead: the default lead) over the
    registry defaults; ``modality:lead=`` (empty) stops serving that lead. ``ValueError`` on unknown modalities
    or malformed entries."""
    models = default_models()
    for entry in filter(None, (e.strip() for e in text.split(","))):
        target, eq, checkpoint = entry.partition("=")
        modality, _, lead = target.strip().partition(":")
        if not eq or modality not in _REGISTRY:
            raise ValueError(f"bad models entry {entry!r}: expected modality[:lead]=checkpoint with modality one "
                             f"of {', '.join(_REGISTRY)}")
        key = (modality, lead.strip() or _REGISTRY[modality].default_lead)
        if checkpoint.strip():
            models[key] = checkpoint.strip()
        else:
            models.pop(key, None)
    return models


register(ModalitySpec(
    name="ecg", default_lead="MLII", checkpoints={"MLII": "mitdb"}, feature_key="beat",
    replay_dataset="mitdb", replay_source="streams.replay:ecg_windows",
    replay_recordings=("100", "200", "210", "233"),  # DS2 (test) records with N/S/V beats
    file_source="streams.replay:ecg_file_windows",
))
register(ModalitySpec(
    name="vibration", default_lead="DE", checkpoints={"DE": "cwru"},
    replay_dataset="cwru", replay_source="streams.replay:vibration_windows",
    # one load-3 (test-load) file per fault class plus the only normal baseline (file 97, load 0)
    replay_recordings=("97", "121", "108", "133"),
    file_source="streams.replay:vibration_file_windows",
))
