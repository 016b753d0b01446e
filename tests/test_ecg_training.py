"""ECG training aids (models/training.py): class-balanced epochs and beat augmentation."""

from __future__ import annotations

import numpy as np
import torch

from models.training import TrainConfig, ecg_augment, epoch_sampler


def test_balanced_epochs_give_each_class_its_share():
    y = np.repeat([0, 1, 2], [9000, 900, 100])
    torch.manual_seed(0)
    drawn = y[list(epoch_sampler(y, 3, TrainConfig(sample_power=1.0, epoch_size=30000)))]
    share = np.bincount(drawn, minlength=3) / drawn.size
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.02)
    drawn = y[list(epoch_sampler(y, 3, TrainConfig(sample_power=0.5, epoch_size=30000)))]
    expected = np.sqrt([9000, 900, 100]) / np.sqrt([9000, 900, 100]).sum()  # count · count^-0.5
    np.testing.assert_allclose(np.bincount(drawn, minlength=3) / drawn.size, expected, atol=0.02)
    # default: one plain shuffle of every window
    assert sorted(epoch_sampler(y, 3, TrainConfig())) == list(range(y.size))


def test_ecg_augment_keeps_the_beat_near_its_place():
    x = torch.zeros(512, 256)
    x[:, 96] = 1.0  # an impulse "R wave" at the window's peak index
    torch.manual_seed(0)
    out = ecg_augment(x, max_shift=4, noise=0.0, wander=0.0, stretch=0.15)
    assert out.shape == x.shape and torch.isfinite(out).all()
    peak = out.abs().argmax(dim=1)
    assert (peak - 96).abs().max() <= 4  # stretching is about the peak; only the shift moves it
    gain = out.abs().amax(dim=1)
    assert gain.min() >= 0.5 and gain.max() <= 2.0 and gain.std() > 0.1
    torch.manual_seed(0)
    assert torch.equal(out, ecg_augment(x, max_shift=4, noise=0.0, wander=0.0, stretch=0.15))  # seeded


def test_ecg_augment_adds_wander_and_noise_relative_to_the_beat():
    t = torch.arange(256.0)
    x = torch.exp(-0.5 * ((t - 96) / 4) ** 2).repeat(256, 1) * 2.0
    torch.manual_seed(1)
    out = ecg_augment(x, max_shift=0)
    resid = out / out[:, 96:97] * 2.0 - x  # undo the gain (the peak keeps its sample without a shift)
    assert resid.abs().mean() > 0.01  # wander and noise were added
    assert resid.abs().max() < 2.0  # ... and stay below the beat's own scale
