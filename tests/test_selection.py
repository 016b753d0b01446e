"""Model selection (models/selection.py): record-grouped cross-validation on DS1, never DS2."""

from __future__ import annotations

import numpy as np
import pytest
from data_marks import needs_data

from models.data import mitdb
from models.selection import ECG_FOLDS, class_report, cross_validate, fold_records


def test_class_report_matches_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    r = class_report(y, pred, ("N", "S", "V", "F"), criterion=("N", "S", "V"))
    assert r["accuracy"] == round(float((y == pred).mean()), 4)
    assert r["macro_f1"] == round(float(f1_score(y, pred, average="macro")), 4)
    assert r["macro_f1_criterion"] == round(float(f1_score(y, pred, labels=[0, 1, 2], average="macro")), 4)
    sens, ppv = recall_score(y, pred, average=None), precision_score(y, pred, average=None)
    for k, c in enumerate("NSVF"):
        assert r["per_class"][c] == {"sensitivity": round(float(sens[k]), 4), "ppv": round(float(ppv[k]), 4)}


def test_folds_are_disjoint_ds1_records():
    flat = [r for fold in ECG_FOLDS for r in fold]
    assert len(flat) == len(set(flat)) and set(flat) <= set(mitdb.DS1) and not set(flat) & set(mitdb.DS2)


def test_leave_one_record_out_holds_out_each_record_of_the_groups_alone():
    folds = fold_records("mitdb", "records")
    assert all(len(f) == 1 for f in folds)
    assert sorted(r for (r,) in folds) == sorted(r for g in ECG_FOLDS for r in g)
    with pytest.raises(ValueError, match="unknown cross-validation protocol 'loo'"):
        fold_records("mitdb", "loo")


@needs_data("mitdb")
def test_cross_validation_holds_out_each_fold_once():
    # a tiny training run per fold (two batches): the structure, not the score, is under test
    report = cross_validate("mitdb", epochs=1, epoch_size=256)
    ds1 = mitdb.load_beats(mitdb.DS1)
    for fold, f in zip(ECG_FOLDS, report["folds"], strict=True):
        assert f["records"] == list(fold) and f["windows"] == int(np.isin(ds1.record, fold).sum())
    assert report["pooled"]["windows"] == sum(f["windows"] for f in report["folds"])
    assert 0.0 <= report["pooled"]["macro_f1_criterion"] <= 1.0 and report["criterion"] == ["N", "S", "V"]


def test_recipes_without_folds_are_refused():
    with pytest.raises(ValueError, match="no cross-validation folds for 'cwru'"):
        cross_validate("cwru")
