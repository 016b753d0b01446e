"""Cross-fitting: models trained without some records, stored beside the checkpoint, whose held-out windows join the
risk rule's evidence (``controller.calibration.calibrate(folds=...)``)."""

from dataclasses import replace

import numpy as np
import torch

from controller.calibration import Fold, calibrate, decider_from_card, decider_of
from controller.decision import decide
from controller.engine import replay_sampler
from controller.passes import sample_passes
from models.architectures import PaperBearingNet
from models.checkpoint import ModelCard, load_fold_model, save_density, save_fold_model
from models.controller_card import ControllerSpec, PolicySpec
from models.data.synthetic import paper_bearings
from models.training import Arrays, TrainConfig, train_model

EPOCHS = 3
SPEC = ControllerSpec(candidates=(PolicySpec("threshold", {"sp_star": 0.85, "t_min": 2}),), risk_alpha=0.1,
                      false_novelty_rate=0.05, quality_checks=True, knn_bank=200)


def _data(n: int, seed: int) -> Arrays:
    x, y = paper_bearings(n, seed)
    return Arrays(x, None, y)


def _model(train: Arrays, seed: int) -> PaperBearingNet:
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=1e-3, seed=seed)
    return train_model(lambda: PaperBearingNet(2), train, 2, cfg)[0]


def test_a_stored_cross_fitted_model_loads_only_for_its_records_and_seed(tmp_path):
    model = _model(_data(200, 1), seed=3)
    save_fold_model(model, "toy", 1, ("a", "b"), 3, tmp_path)
    loaded = load_fold_model("toy", 1, ("a", "b"), 3, directory=tmp_path)
    x = torch.as_tensor(_data(8, 2).x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert load_fold_model("toy", 1, ("a", "b"), 4, directory=tmp_path) is None  # another seed: retrain
    assert load_fold_model("toy", 1, ("a",), 3, directory=tmp_path) is None  # other records: retrain
    assert load_fold_model("toy", 2, ("a", "b"), 3, directory=tmp_path) is None  # none stored


def test_the_risk_rule_is_certified_on_the_held_out_windows_of_every_model(tmp_path):
    train, val = _data(600, 10), _data(400, 11)
    fold_train, fold_held = _data(600, 12), _data(300, 13)
    model, fold_model = _model(train, 0), _model(fold_train, 1)
    cal = calibrate(model, train, val, SPEC, None, 2, folds=[Fold("records b", fold_model, fold_train, fold_held)])
    risk, sel = cal.controller.risk, cal.controller.selection_on_validation
    assert risk.validation["models"] == 2
    assert list(sel["risk_models"]) == ["validation", "records b"]
    # the certification windows: the calibration halves of both held-out sets that reached the rule
    reached = sum(m["windows"] for m in sel["risk_models"].values())
    assert risk.validation["windows"] <= reached == 200 + 150
    assert risk.validation["windows"] > 0.8 * reached
    # certified in each model's held-out windows, not only on their pool: each calibration half keeps α
    assert risk.certified and all(m["risk_answered"] < risk.alpha for m in sel["risk_models"].values())
    # each fold has its own temperature, fitted on its own held-out windows
    assert sel["risk_models"]["validation"]["temperature"] == round(cal.temperature, 5)
    assert sel["risk_models"]["records b"]["temperature"] != sel["risk_models"]["validation"]["temperature"]

    # the fresh calibration's decider and the one a saved card prescribes take the same decisions
    card = ModelCard(name="toy", arch=model.arch, arch_params=dict(model.arch_params), dataset="synthetic",
                     modality="vibration", split="toy", classes=["normal", "fault"], fs=200.0,
                     input_length=model.input_length, aux=None, temperature=cal.temperature, controller=cal.controller,
                     seed=0)
    save_density("toy", {k: m.state() for k, m in cal.novelty.items()}, tmp_path)
    passes = sample_passes(model, _data(200, 14), SPEC.t_max)
    fresh = decide(passes.evidence(), replay_sampler(passes.mc), decider_of(cal))
    saved = decide(passes.evidence(), replay_sampler(passes.mc), decider_from_card(card, tmp_path))
    assert np.array_equal(fresh.label, saved.label) and np.array_equal(fresh.abstained, saved.abstained)
    assert np.array_equal(fresh.reason, saved.reason)
    # without the fold, the rule rests on the validation windows alone
    alone = calibrate(model, train, val, replace(SPEC), None, 2).controller
    assert alone.risk.validation["models"] == 1 and "risk_models" not in alone.selection_on_validation
