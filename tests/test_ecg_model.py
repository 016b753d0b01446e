"""The ECG beat model's invariances: the patient's gain and baseline do not change its output."""

from __future__ import annotations

import torch

from models.architectures import EcgBeatNet
from models.data.rr import RR_FEATURES


def _beats(b: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(256.0)
    x = torch.exp(-0.5 * ((t - 96) / 4) ** 2)[None, :] * (0.5 + torch.rand(b, 1, generator=g))
    x = x + 0.05 * torch.randn(b, 256, generator=g)
    rr = 0.6 + 0.4 * torch.rand(b, len(RR_FEATURES), generator=g)
    morph = torch.rand(b, 3, generator=g)
    tpl = torch.exp(-0.5 * ((t - 96) / 4) ** 2)[None, :].repeat(b, 1) * 0.9
    return x, torch.cat([rr, morph, tpl], dim=1)


def test_gain_and_baseline_of_the_stream_do_not_change_the_logits():
    model = EcgBeatNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x, aux = _beats()
    gained = aux.clone()
    gained[:, EcgBeatNet.context] *= 3.0  # the stream's template scales with its gain
    with torch.no_grad():
        ref = model(x, aux)
        torch.testing.assert_close(model(3.0 * x + 0.7, gained), ref, rtol=1e-4, atol=1e-4)
        # the beat's amplitude relative to the patient's template does matter
        assert not torch.allclose(model(3.0 * x, aux), ref, atol=1e-3)
