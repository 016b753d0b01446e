"""Training recipes: for each dataset, the model, its data splits, training settings and controller defaults.

Splits (every number in the docs says which one it comes from):
- ``mitdb``: AAMI N/S/V/F beats (Q excluded, reported separately by the data loader), inter-patient: train = DS1
  minus the validation records, val = DS1 records ``VAL_RECORDS`` (temperature, policy choice), test = DS2.
- ``cwru``: 4 classes (normal, ball, inner, outer) over all 12 kHz drive-end recordings and loads, each recording
  cut in time into train / val / test blocks separated by gaps (no test frame overlaps a training sample).
- ``cwru-loadshift``: same classes, train/val on motor loads 0-2, test on load 3 (normal: only load 0 exists, so it
  follows the time-block split).
- ``paper-bearings``: the paper's synthetic generator, 2000 train / 500 test per seed (+500 val, another seed).
- ``paper-mitdb``: the paper's binary N-vs-rest beats at 125 Hz, random split across beats (patients leak, as in the
  paper), 12000 train / 2000 test (+1000 val), one draw (seed 42) for every training seed, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from models.architectures import BearingFrameNet, EcgBeatNet, McModel, PaperBearingNet, PaperEcgNet
from models.controller_card import ControllerSpec, PolicySpec
from models.training import Arrays, TrainConfig

if TYPE_CHECKING:
    from models.data.mitdb import BeatSet

# the reference samples its beats with pandas random_state=42 whatever the training seed
PAPER_MITDB_DRAW_SEED = 42


@dataclass(frozen=True)
class Splits:
    train: Arrays
    val: Arrays
    test: Arrays


@dataclass(frozen=True)
class HeldOut:
    """One cross-fitting fold: a model trained on ``train`` is judged on ``held_out``, the windows of ``records``."""

    records: tuple[str, ...]
    train: Arrays
    held_out: Arrays

    @classmethod
    def of(cls, windows: BeatSet, records: tuple[str, ...]) -> HeldOut:
        """Split ``windows`` into the windows of ``records`` (held out) and the rest (train)."""
        import numpy as np

        held = np.isin(windows.record, records)
        tr, te = windows.subset(~held), windows.subset(held)
        return cls(tuple(records), Arrays(tr.x, tr.aux, tr.y), Arrays(te.x, te.aux, te.y))


@dataclass(frozen=True)
class Recipe:
    name: str  # checkpoint name
    dataset: str
    modality: str
    classes: tuple[str, ...]
    fs: float
    aux: str | None
    split: str
    make_model: Callable[[], McModel]
    train: TrainConfig
    load: Callable[[int], Splits]  # seed -> splits
    temperature: float | None = None  # None: fitted on the validation split
    controller: ControllerSpec = field(default_factory=ControllerSpec)
    # folds beside the validation split whose models' held-out windows join the risk rule's evidence (None: the
    # validation split alone; ``controller.calibration.fit_risk``)
    cross_fit: Callable[[], tuple[HeldOut, ...]] | None = None


def _mitdb(seed: int) -> Splits:
    from models.data import mitdb

    train = mitdb.load_beats(mitdb.TRAIN_RECORDS)
    val = mitdb.load_beats(mitdb.VAL_RECORDS)
    test = mitdb.load_beats(mitdb.DS2)
    return Splits(*(Arrays(b.x, b.aux, b.y) for b in (train, val, test)))


def _mitdb_cross_fit() -> tuple[HeldOut, ...]:
    from models.data import mitdb

    beats = mitdb.load_beats(mitdb.DS1)
    return tuple(HeldOut.of(beats, records) for records in mitdb.DS1_GROUPS[1:])  # the first is the validation split


def _cwru(seed: int) -> Splits:
    from models.data import cwru

    parts = [cwru.load_frames(s) for s in ("train", "val", "test")]
    return Splits(*(Arrays(f.x, None, f.y) for f in parts))


def _cwru_loadshift(seed: int) -> Splits:
    from models.data import cwru

    train, val, test = cwru.load_shift_frames(train_loads=(0, 1, 2), test_load=3)
    return Splits(*(Arrays(f.x, None, f.y) for f in (train, val, test)))


def _paper_bearings(seed: int) -> Splits:
    from models.data.synthetic import paper_bearings

    x, y = paper_bearings(2500, seed)
    xv, yv = paper_bearings(500, seed + 100_003)
    return Splits(Arrays(x[:2000], None, y[:2000]), Arrays(xv, None, yv), Arrays(x[2000:], None, y[2000:]))


def _paper_mitdb(seed: int) -> Splits:
    from models.data.paper_mitdb import load_paper_beats

    # the seed varies only the model's init, shuffling and dropout: the beats are one draw for every seed
    b = load_paper_beats(seed=PAPER_MITDB_DRAW_SEED, n_train=12000, n_test=3000)
    return Splits(Arrays(b.x_train, None, b.y_train), Arrays(b.x_test[2000:], None, b.y_test[2000:]),
                  Arrays(b.x_test[:2000], None, b.y_test[:2000]))


_CANDIDATES = (PolicySpec("paper", {"eps": 0.005, "sp_floor": 0.8, "t_min": 4}),
               PolicySpec("threshold", {"sp_star": 0.85, "t_min": 2}),
               PolicySpec("bound", {"z": 2.0, "margin": 0.0, "t_min": 3}))
# production: target error among answered windows (risk_alpha) held with confidence 1 − δ = 90 %, 1 % of
# in-distribution validation windows may be flagged unfamiliar, cheap input checks before the model.
# ECG: the spectrum-shape detector judges 0-40 Hz, the ECG monitoring band (IEC 60601-2-27's monitor filter, 0.67-40
# Hz), which every ECG source carries, including the many sampled at 128-250 Hz; above it MIT-BIH's 360 Hz
# recordings hold only their own noise floor, and a 250 Hz source resampled to 360 Hz was flagged unfamiliar on half
# its beats for lacking it while the model's labels did not change. Vibration: the whole band (sources >= 12 kHz).
# ECG mains lines (50 / 60 Hz and harmonics) are left out of that detector: every ECG device notches them, the model
# is robust to them (DS1 validation, plain-pass accuracy unchanged up to 0.2 mV of hum), and 0.05-0.1 mV of hum, common
# in real recordings, had 24-85 % of DS1 validation beats flagged unfamiliar; vibration keeps its lines (a motor's
# electrical lines are part of the machine's signature).
_ECG_CONTROLLER = ControllerSpec(candidates=_CANDIDATES, risk_alpha=0.02, risk_delta=0.1, false_novelty_rate=0.01,
                                 quality_checks=True, spectrum_band_hz=40.0, spectrum_lines_hz=(50.0, 60.0))
_VIBRATION_CONTROLLER = replace(_ECG_CONTROLLER, risk_alpha=0.01, spectrum_band_hz=None, spectrum_lines_hz=())
# the paper's protocol: its rule pinned, no gate, no risk rule (the policy alone abstains, at the budget)
_PAPER_CONTROLLER = ControllerSpec(candidates=_CANDIDATES, select="paper")

_ECG = {"dataset": "mitdb", "modality": "ecg", "fs": 360.0, "aux": "beat"}
_CWRU = {"modality": "vibration", "classes": ("normal", "ball", "inner", "outer"), "fs": 12000.0, "aux": None}

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("mitdb", classes=("N", "S", "V", "F"), **_ECG,
           split="train DS1 minus VAL_RECORDS / val DS1 VAL_RECORDS / test DS2 (inter-patient)",
           make_model=lambda: EcgBeatNet(4, side_width=32),
           # chosen on DS1 record-grouped folds (models/selection.py, `train --dataset mitdb --cv`, never DS2;
           # criterion: macro-F1 N/S/V pooled over the folds, mean of seeds 42 and 100): side features embedded in 32
           # units (0.646 vs 0.592 without; 64 units 0.640 and 12 epochs 0.648 for seed 42 alone), class-balanced
           # epochs without loss weights (0.653 vs 0.646 for √-balanced epochs x √ class weights), ECG augmentation
           # (wander, noise, shifts), windows centred on the R fiducial (0.675), an ensemble of 3 (0.689 vs 0.675), a
           # linear expert on the side features, weight 1 (0.711 vs 0.689; one record out, seed 42: 0.719 vs 0.697)
           train=TrainConfig(epochs=8, batch_size=128, lr=1e-3, weight_decay=1e-4, class_weighted=False,
                             sample_power=1.0, epoch_size=16000, augment="ecg", members=3, side_expert=1.0),
           load=_mitdb, controller=_ECG_CONTROLLER, cross_fit=_mitdb_cross_fit),
    Recipe("cwru", dataset="cwru", **_CWRU, split="per-recording time blocks 60/20/20 with gaps, all loads",
           make_model=lambda: BearingFrameNet(4), train=TrainConfig(epochs=10, batch_size=64, lr=1e-3),
           load=_cwru, controller=_VIBRATION_CONTROLLER),
    Recipe("cwru-loadshift", dataset="cwru", **_CWRU, split="train/val loads 0-2 (time blocks), test load 3",
           make_model=lambda: BearingFrameNet(4), train=TrainConfig(epochs=10, batch_size=64, lr=1e-3),
           load=_cwru_loadshift, controller=_VIBRATION_CONTROLLER),
    Recipe("paper-bearings", dataset="synthetic-bearings", modality="vibration", classes=("normal", "fault"),
           fs=200.0, aux=None, split="synthetic: 2000 train / 500 test from the seed, 500 val from seed+100003",
           make_model=lambda: PaperBearingNet(2), train=TrainConfig(epochs=10, batch_size=64, lr=1e-3,
                                                                    class_weighted=False),
           load=_paper_bearings, temperature=1.0, controller=_PAPER_CONTROLLER),
    Recipe("paper-mitdb", dataset="mitdb-paper-binary", modality="ecg", classes=("normal", "abnormal"), fs=125.0,
           aux=None, split="random across beats (patients leak, as in the paper): 12000 train / 2000 test / 1000 val",
           make_model=lambda: PaperEcgNet(2), train=TrainConfig(epochs=10, batch_size=64, lr=1e-3),
           load=_paper_mitdb, temperature=0.5, controller=_PAPER_CONTROLLER),
)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(RECIPES)}") from None

