"""Training helpers: the standard seeded PyTorch recipe, class weights, temperature fitting."""

import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from models.architectures import EcgBeatNet, Ensemble, PaperBearingNet, SideExpert, beat_side_features
from models.checkpoint import code_version
from models.data.synthetic import paper_bearings
from models.training import Arrays, TrainConfig, class_weights, fit_side_expert, fit_temperature, train_model


def test_train_model_is_bit_identical_to_the_plain_seeded_pytorch_loop():
    x, y = paper_bearings(300, seed=7)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, class_weighted=False, seed=11)
    ours, stats = train_model(lambda: PaperBearingNet(2), Arrays(x, None, y), 2, cfg)
    assert not ours.training and stats["final_loss"] > 0

    torch.manual_seed(11)  # seed, build, then DataLoader(shuffle=True) + nn.Dropout, as a reference script does
    ref = PaperBearingNet(2)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ref.train()
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64, shuffle=True)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_an_ensemble_trains_its_members_with_consecutive_seeds():
    x, y = paper_bearings(200, seed=3)
    cfg = TrainConfig(epochs=1, batch_size=64, class_weighted=False, seed=5)
    ens, stats = train_model(lambda: PaperBearingNet(2), Arrays(x, None, y), 2, replace(cfg, members=2))
    assert isinstance(ens, Ensemble) and not ens.training and stats["final_loss"] > 0
    for m, seed in zip(ens.members, (5, 6), strict=True):  # member m = the single model of seed 5 + m
        single, _ = train_model(lambda: PaperBearingNet(2), Arrays(x, None, y), 2,
                                replace(cfg, seed=seed))
        for (name, a), b in zip(m.state_dict().items(), single.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_the_side_expert_is_scikit_learns_balanced_logistic_regression_on_the_side_features():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 4, n)
    aux = (0.6 + 0.4 * rng.random((n, EcgBeatNet.aux_dim))).astype(np.float32)
    aux[:, 5] *= np.where(y == 1, 0.7, 1.0).astype(np.float32)  # class 1 premature: the expert can learn it
    x = rng.standard_normal((n, 256)).astype(np.float32)
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3)
    base, _ = train_model(lambda: EcgBeatNet(side_width=32), Arrays(x, aux, y), 4, cfg)
    model, _ = train_model(lambda: EcgBeatNet(side_width=32), Arrays(x, aux, y), 4, replace(cfg, side_expert=2.0))
    assert isinstance(model, SideExpert) and not model.training
    for a, b in zip(model.base.state_dict().values(), base.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the network trains exactly as without the expert
    z = beat_side_features(torch.from_numpy(aux)).numpy()
    ref = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)).fit(z, y)
    xt, at = torch.from_numpy(x), torch.from_numpy(aux)
    with torch.no_grad():
        got = model(xt, at) - base(xt, at)
    np.testing.assert_allclose(got.numpy(), 2.0 * ref.predict_log_proba(z), atol=1e-4)
    with pytest.raises(ValueError, match="every class"):
        fit_side_expert(base, Arrays(x, aux, np.where(y == 3, 0, y)), 4)


def test_class_weights_match_sklearn_balanced_up_to_scale():
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(class_weights(y, 3).numpy(), balanced / balanced.mean(), rtol=1e-6)
    tempered = np.sqrt(balanced)
    np.testing.assert_allclose(class_weights(y, 3, power=0.5).numpy(), tempered / tempered.mean(), rtol=1e-6)
    w = class_weights(y, 4).numpy()  # an absent class gets 0; the present ones keep mean 1
    assert w[3] == 0 and np.isclose(w[:3].mean(), 1.0)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(20000, 4, generator=gen)
    y = torch.multinomial(torch.softmax(logits / 2.0, dim=1), 1, generator=gen).squeeze(1)
    assert abs(fit_temperature(logits, y) - 2.0) < 0.1


def test_code_version_is_dirty_for_changed_code_but_not_for_freshly_written_checkpoints(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    ckpt = tmp_path / "models" / "checkpoints"
    ckpt.mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (ckpt / "a.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    clean = code_version(ckpt.parent, ckpt)
    assert clean and "dirty" not in clean and clean != "unknown"
    (ckpt / "a.json").write_text('{"retrained": true}\n')  # the run's earlier checkpoint
    assert code_version(ckpt.parent, ckpt) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_version(ckpt.parent, ckpt) == clean + "-dirty"
    assert code_version(tmp_path.parent, ckpt) == "unknown"  # not a checkout
