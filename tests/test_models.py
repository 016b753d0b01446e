"""MC-dropout mechanics of the models: trunk/head split, frozen normalisation, keyed masks."""

import numpy as np
import pytest
import torch

from controller.engine import SciConfig
from controller.policies import SeparationBound
from controller.sci import SciController
from models.architectures import (
    ARCHITECTURES,
    BearingFrameNet,
    EcgBeatNet,
    Ensemble,
    SideExpert,
    beat_side_features,
    member_noise,
)
from models.keyed_dropout import BANK_ROWS, CHUNK, KeyedDropout, PassNoise, mask_bank, shift_keys, window_keys


def _inputs(model, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, model.input_length, generator=g)
    aux = 0.6 + 0.4 * torch.rand(b, model.aux_dim, generator=g) if model.aux_dim else None
    return x, aux


def _build(arch: str) -> torch.nn.Module:
    if arch == Ensemble.arch:  # an ensemble of two ECG models
        return Ensemble(EcgBeatNet.arch, EcgBeatNet(side_width=32).arch_params, 2)
    if arch == SideExpert.arch:  # an ECG model with a (random) side expert
        model = SideExpert(EcgBeatNet.arch, EcgBeatNet(side_width=32).arch_params, 4)
        torch.nn.init.normal_(model.coef, generator=torch.Generator().manual_seed(0))
        return model
    return ARCHITECTURES[arch]()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_trunk_once_then_head_equals_full_model_sampling(arch):
    model = _build(arch).eval()
    x, aux = _inputs(model)
    keys = torch.arange(16) * 7919
    h = model.trunk(x, aux)
    for t in (1, 2, 25):
        noise = PassNoise(keys, t)
        full = model(x, aux, noise)
        torch.testing.assert_close(model.head(h, noise), full, rtol=0, atol=0)
    # the passes really are stochastic, and deterministic without noise
    assert not torch.equal(model(x, aux, PassNoise(keys, 1)), model(x, aux, PassNoise(keys, 2)))
    torch.testing.assert_close(model(x, aux), model(x, aux))


def test_normalisation_layers_stay_frozen_during_mc_sampling():
    model = EcgBeatNet()
    # give BatchNorm non-trivial running statistics, as after training
    model.train()
    for _ in range(3):
        model(*_inputs(model, 64, seed=1))
    model.eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    ctrl = SciController(model, SeparationBound(), SciConfig(t_max=10))
    x, aux = _inputs(model, 32, seed=2)
    ctrl.classify(x, aux, torch.arange(32))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, buffers[k], rtol=0, atol=0, msg=f"{k} changed during MC sampling")
    assert not any(m.training for m in model.modules())
    # trunk output (all normalisation) is identical across passes; only the head varies
    noise = [PassNoise(torch.arange(32), t) for t in (1, 2)]
    h1, h2 = (model.trunk(x, aux) for _ in noise)
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)
    # in train mode BatchNorm would use batch statistics and give a different trunk: the test is sensitive
    model.train()
    assert not torch.allclose(model.trunk(x, aux), h1)


def test_keyed_dropout_rate_scale_and_reproducibility():
    drop = KeyedDropout(0.3, salt=5).eval()
    x = torch.ones(64, 2000)
    keys = torch.arange(64)
    y = drop(x, PassNoise(keys, 3))
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.7, abs=0.01)
    assert y[y != 0].unique().tolist() == pytest.approx([1 / 0.7])
    torch.testing.assert_close(drop(x, PassNoise(keys, 3)), y, rtol=0, atol=0)
    # a window's mask does not depend on its batch neighbours
    torch.testing.assert_close(drop(x[10:11], PassNoise(keys[10:11], 3)), y[10:11], rtol=0, atol=0)
    # different passes and different layers (salts) draw different masks, with no correlation to speak of
    other = drop(x, PassNoise(keys, 4)) != 0
    agree = ((y != 0) == other).float().mean().item()
    assert agree == pytest.approx(0.7**2 + 0.3**2, abs=0.01)
    # eval without noise is the identity; training mode is ordinary dropout
    torch.testing.assert_close(drop(x), x)
    assert (drop.train()(x) == 0).any()


def test_mask_bank_rows_are_bernoulli_and_fixed():
    bank = mask_bank(0.3, torch.device("cpu"))
    assert bank.shape == (BANK_ROWS, CHUNK)
    assert bank.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    # every column keeps 70 % of its rows (1M draws in all: the binomial sd per column is 0.0018)
    np.testing.assert_allclose((bank != 0).float().mean(0).numpy(), 0.7, atol=0.01)
    mask_bank.cache_clear()
    torch.testing.assert_close(mask_bank(0.3, torch.device("cpu")), bank, rtol=0, atol=0)


def test_passes_drawn_in_one_call_equal_passes_drawn_one_at_a_time():
    drop = KeyedDropout(0.5, salt=2)
    x = torch.randn(10, 69)  # not a multiple of the chunk width
    keys = torch.arange(10) * 31
    steps = torch.arange(1, 5).repeat_interleave(10)  # passes 1..4 of every window, pass-major
    block = drop(x.repeat(4, 1), PassNoise(keys.repeat(4), steps)).view(4, 10, 69)
    for t in range(1, 5):
        torch.testing.assert_close(block[t - 1], drop(x, PassNoise(keys, t)), rtol=0, atol=0)
    # the 4 passes of a window are different masks
    assert len({tuple((block[t, 0] != 0).tolist()) for t in range(4)}) == 4


def test_batched_and_per_window_controller_decisions_identical_on_a_real_model():
    torch.manual_seed(0)
    model = BearingFrameNet(p=0.5)
    ctrl = SciController(model, SeparationBound(z=1.0), SciConfig(t_max=25))
    x, _ = _inputs(model, 40, seed=3)
    keys = window_keys(["cwru-105"] * 40, torch.arange(40))
    batched = ctrl.classify(x, None, keys)
    singles = [ctrl.classify(x[i : i + 1], None, keys[i : i + 1]) for i in range(40)]
    for field in ("label", "passes", "reason", "abstained"):
        np.testing.assert_array_equal(getattr(batched, field), np.concatenate([getattr(s, field) for s in singles]))
    np.testing.assert_allclose(batched.sp, np.concatenate([s.sp for s in singles]), atol=1e-6)


def test_shifted_noises_draw_together_the_masks_each_draws_alone():
    keys, steps = torch.arange(12) * 104729 - 50, torch.arange(12) % 5 + 1
    shifts = [0, 3, 2**64 - 1, 2**63 + 17]  # wrapping shifts
    for step in (steps, 3):
        noise = PassNoise(keys, step)
        together = noise.shifted(shifts)
        for shift, view in zip(shifts, together, strict=True):
            alone = PassNoise(shift_keys(keys, shift), step)
            torch.testing.assert_close(view.keys, alone.keys, rtol=0, atol=0)
            for shape, p, salt in (((69,), 0.5, 1), ((3, 40), 0.2, 7)):
                torch.testing.assert_close(view.mask(torch.Size(shape), p, salt),
                                           alone.mask(torch.Size(shape), p, salt), rtol=0, atol=0)
    # one window, several passes: keys and steps broadcast
    one = PassNoise(keys[:1], steps)
    for shift, view in zip(shifts, one.shifted(shifts), strict=True):
        torch.testing.assert_close(view.mask(torch.Size((69,)), 0.5, 1),
                                   PassNoise(shift_keys(keys[:1], shift), steps).mask(torch.Size((69,)), 0.5, 1))
    # a layer's mask is drawn once per noise and kept
    assert noise.mask(torch.Size((69,)), 0.5, 1) is noise.mask(torch.Size((69,)), 0.5, 1)


def test_side_expert_adds_its_log_probabilities_to_every_pass_of_the_model():
    torch.manual_seed(0)
    base = Ensemble.of([EcgBeatNet(side_width=32).eval() for _ in range(2)]).eval()
    model = SideExpert(base.arch, base.arch_params, 4, weight=0.5)
    model.base.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(1)
    for name in ("mean", "coef", "intercept"):
        getattr(model, name).normal_(generator=g)
    model.scale.uniform_(0.5, 2.0, generator=g)
    model.eval()
    assert (model.n_heads, model.context, model.side_kind) == (2, EcgBeatNet.context, "beat")
    x, aux = _inputs(model)
    z = (beat_side_features(aux) - model.mean) / model.scale
    expert = torch.log_softmax(z @ model.coef.T + model.intercept, dim=1)
    keys = torch.arange(16) * 7919
    for noise in (None, PassNoise(keys, 1), PassNoise(keys, 7)):  # the same term in the plain pass and every MC pass
        torch.testing.assert_close(model(x, aux, noise), base(x, aux, noise) + 0.5 * expert, rtol=0, atol=1e-5)
    # its trunk features are the model's, then the standardised side features (what the novelty gate sees)
    torch.testing.assert_close(model.trunk(x, aux), torch.cat([base.trunk(x, aux), z], 1), rtol=0, atol=1e-6)
    again = ARCHITECTURES[model.arch](**model.arch_params)  # a checkpoint rebuilds it, buffers included
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval()(x, aux, PassNoise(keys, 3)), model(x, aux, PassNoise(keys, 3)),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="no side features"):
        SideExpert(BearingFrameNet.arch, {}, 4)


def test_window_keys_are_stable_and_distinct():
    k1 = window_keys(["a", "a", "b"], torch.tensor([0, 1, 0]))
    k2 = window_keys(["a", "a", "b"], torch.tensor([0, 1, 0]))
    torch.testing.assert_close(k1, k2)
    assert len(set(k1.tolist())) == 3


def test_ensemble_averages_its_members_logits_and_draws_independent_passes():
    torch.manual_seed(0)
    members = [EcgBeatNet(side_width=32).eval() for _ in range(3)]
    ens = Ensemble.of(members).eval()
    assert (ens.input_length, ens.aux_dim, ens.context) == (256, 268, EcgBeatNet.context)
    x, aux = _inputs(ens)
    torch.testing.assert_close(ens(x, aux), sum(m(x, aux) for m in members) / 3, rtol=0, atol=1e-6)
    keys = torch.arange(16) * 7919
    noise = PassNoise(keys, 4)
    # member 0 draws exactly the passes a single model would; the others draw their own
    assert member_noise(noise, 0) is noise
    # the members' masks, drawn together, are bit for bit those each member draws alone
    torch.testing.assert_close(ens(x, aux, noise), sum(m(x, aux, member_noise(noise, i)) for i, m in
                                                       enumerate(members)) / 3, rtol=0, atol=0)
    same = members[0]
    assert not torch.equal(same(x, aux, member_noise(noise, 1)), same(x, aux, noise))
    # a checkpoint rebuilds it from its arch_params
    again = ARCHITECTURES[ens.arch](**ens.arch_params)
    again.load_state_dict(ens.state_dict())
    torch.testing.assert_close(again.eval()(x, aux, noise), ens(x, aux, noise), rtol=0, atol=0)
    with pytest.raises(ValueError):
        Ensemble(EcgBeatNet.arch, {}, 0)
