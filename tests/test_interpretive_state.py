import math

import pytest
import torch

from controller.interpretive_state import delta_sp, interpretive_state, normalized_entropy, probabilities


def test_uniform_prediction_has_zero_sp():
    assert interpretive_state(torch.zeros(3, 4)).tolist() == pytest.approx([0.0] * 3, abs=1e-6)


def test_sp_hand_computed_two_classes():
    # p = (0.75, 0.25): H = 0.75·ln(4/3) + 0.25·ln 4 = 0.5623351; H/ln2 = 0.8112781; SP = 0.1887219
    z = torch.tensor([[math.log(3.0), 0.0]])
    assert interpretive_state(z).item() == pytest.approx(0.1887219, abs=1e-6)


def test_temperature_sharpens():
    z = torch.tensor([[math.log(3.0) / 2, 0.0]])
    assert probabilities(z, 0.5)[0].tolist() == pytest.approx([0.75, 0.25], abs=1e-6)
    assert interpretive_state(z, 0.5).item() == pytest.approx(0.1887219, abs=1e-6)


def test_clamp_makes_one_hot_certain():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert normalized_entropy(p).item() == pytest.approx(0.0, abs=1e-7)
    assert not torch.isnan(normalized_entropy(p)).any()


def test_sp_hand_computed_four_classes():
    # p = (0.4, 0.3, 0.2, 0.1): H = 1.2798542; /ln4 = 0.9232197; SP = 0.0767803
    p = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    assert 1 - normalized_entropy(p).item() == pytest.approx(0.0767803, abs=1e-6)


def test_delta_sp():
    assert delta_sp(torch.tensor([0.1887219, 1.0]), 0.85).tolist() == pytest.approx([0.6612781, 0.15], abs=1e-6)
