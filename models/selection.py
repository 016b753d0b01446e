"""Model selection on the training data only: record-grouped cross-validation of a recipe (never its test split).

The ECG recipe is chosen by training on DS1 minus one group of records and labelling the held-out group with one
deterministic pass, for each of :data:`ECG_FOLDS` (``models.data.mitdb.DS1_GROUPS``: the validation records, then two
groups that spread DS1's supraventricular and ventricular records), then pooling the held-out labels: every held-out
beat belongs to a patient the fold's model never saw, as in the inter-patient DS1 → DS2 protocol, but DS2 stays
untouched. ``sci-monitor train --cv`` runs it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.data.mitdb import DS1_GROUPS
from models.recipes import HeldOut, Recipe, get_recipe
from models.training import train_model

if TYPE_CHECKING:
    from models.data.mitdb import BeatSet

ECG_FOLDS = DS1_GROUPS
FOLDS: dict[str, tuple[tuple[str, ...], ...]] = {"mitdb": ECG_FOLDS}
# "groups": the folds above; "records": leave one record out, each record of those groups held out alone (16 folds
# for mitdb, each model trained on 21 of DS1's 22 records: closer to the final model, so finer for small gains)
PROTOCOLS = ("groups", "records")
# the selection criterion: macro-F1 over these classes (F: 373 of DS1's 415 F beats are in record 208, always trained
# on, so held-out F scores measure one or two beats per record)
CRITERION: dict[str, tuple[str, ...]] = {"mitdb": ("N", "S", "V")}


def class_report(y: np.ndarray, pred: np.ndarray, classes: tuple[str, ...],
                 criterion: tuple[str, ...] = ()) -> dict[str, object]:
    """Accuracy, macro-F1 (over all classes, and over the ``criterion`` classes as ``macro_f1_criterion``) and
    per-class sensitivity / PPV of labels ``pred`` int[N] against ``y`` int[N].

    >>> r = class_report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ("N", "S"))
    >>> r["accuracy"], r["per_class"]["S"]
    (0.75, {'sensitivity': 1.0, 'ppv': 0.6667})
    """
    from sklearn.metrics import confusion_matrix, f1_score

    labels = list(range(len(classes)))
    cm = confusion_matrix(y, pred, labels=labels)
    sens = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    ppv = cm.diagonal() / np.maximum(cm.sum(axis=0), 1)
    crit = [classes.index(c) for c in criterion] or labels
    return {
        "windows": len(y),
        "accuracy": round(float((y == pred).mean()), 4),
        "macro_f1": round(float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)), 4),
        "macro_f1_criterion": round(float(f1_score(y, pred, labels=crit, average="macro", zero_division=0)), 4),
        "per_class": {c: {"sensitivity": round(float(s), 4), "ppv": round(float(p), 4)}
                      for c, s, p in zip(classes, sens, ppv, strict=True)},
    }


def _training_beats(name: str) -> BeatSet:
    """The records the folds of ``name`` are cut from (mitdb: DS1)."""
    from models.data import mitdb

    return mitdb.load_beats(mitdb.DS1)


def fold_records(name: str, protocol: str = "groups") -> tuple[tuple[str, ...], ...]:
    """The held-out record groups of recipe ``name`` under ``protocol`` (:data:`PROTOCOLS`).

    >>> len(fold_records("mitdb")), len(fold_records("mitdb", "records")), fold_records("mitdb", "records")[0]
    (3, 16, ('116',))
    """
    if name not in FOLDS:
        raise ValueError(f"no cross-validation folds for {name!r}; recipes with folds: {', '.join(FOLDS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown cross-validation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    groups = FOLDS[name]
    return groups if protocol == "groups" else tuple((r,) for g in groups for r in g)


def cross_validate(name: str, seed: int = 42, device: str | torch.device = "cpu",
                   log: Callable[[str], None] = lambda _m: None, protocol: str = "groups",
                   **train_overrides: object) -> dict[str, object]:
    """Record-grouped cross-validation of recipe ``name`` on its training data (:func:`fold_records`; DS1 for mitdb).

    ``train_overrides`` replace fields of the recipe's :class:`~models.training.TrainConfig`. Returns
    ``{"recipe", "seed", "protocol", "folds": [{"records", "seconds", **class_report}], "pooled": class_report,
    "seconds"}``.
    """
    fold_groups = fold_records(name, protocol)
    recipe: Recipe = get_recipe(name)
    cfg = dataclasses.replace(recipe.train, seed=seed, **train_overrides)
    data = _training_beats(name)
    start, ys, preds, folds = time.perf_counter(), [], [], []
    for i, records in enumerate(fold_groups, 1):
        h = HeldOut.of(data, records)
        te = h.held_out
        model, info = train_model(recipe.make_model, h.train, len(recipe.classes), cfg, device)
        with torch.no_grad():
            pred = model(torch.as_tensor(te.x, device=device), torch.as_tensor(te.aux, device=device)).argmax(1)
        pred = pred.cpu().numpy()
        rep = class_report(te.y, pred, recipe.classes, CRITERION.get(name, ()))
        folds.append({"records": list(records), "seconds": info["seconds"], **rep})
        log(f"[{name}] fold {i}/{len(fold_groups)} (held out {' '.join(records)}): accuracy {rep['accuracy']}, "
            f"macro-F1 {rep['macro_f1_criterion']}, {info['seconds']:.0f} s")
        ys.append(te.y)
        preds.append(pred)
    return {"recipe": name, "seed": seed, "protocol": protocol, "folds": folds,
            "criterion": list(CRITERION.get(name, recipe.classes)),
            "pooled": class_report(np.concatenate(ys), np.concatenate(preds), recipe.classes, CRITERION.get(name, ())),
            "seconds": round(time.perf_counter() - start, 1)}
