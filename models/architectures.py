"""Small 1D CNNs split into a deterministic trunk and a stochastic (MC-dropout) head.

Every model maps ``x: float32[B, L]`` (one channel at the model's fs) and ``aux: float32[B, A]`` (side features,
``A = 0`` for most models) to logits ``float32[B, K]``. All dropout lives in the head, so the SCI controller runs the
trunk once per window and resamples only the head: ``forward(x, aux, noise) == head(trunk(x, aux), noise)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.data.morph import MORPH_FEATURES
from models.data.rr import RR_FEATURES
from models.keyed_dropout import KeyedDropout, PassNoise, shift_keys
from models.reductions import row_median


class McModel(nn.Module):
    """Base class: subclasses define ``trunk`` (deterministic) and ``head`` (all the dropout)."""

    arch: ClassVar[str]
    input_length: ClassVar[int]
    aux_dim: ClassVar[int] = 0
    # the columns of aux holding the stream's usual window (a running template, same length and units as x), which
    # the controller's input checks judge the stream by; None: the model has no stream context
    context: ClassVar[slice | None] = None
    arch_params: dict  # the constructor arguments, saved in checkpoints to rebuild the model
    # heads one ``head`` call runs one after the other (an ensemble: one per member); the trunk features split
    # evenly between them. The controller sizes its rounds of drawn-ahead passes by the width of one of them.
    n_heads: int = 1
    # the side features (a key of SIDE_FEATURES) a linear expert (SideExpert) can read from aux; None: none
    side_kind: ClassVar[str | None] = None

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, aux: Tensor | None = None, noise: PassNoise | None = None) -> Tensor:
        return self.head(self.trunk(x, aux), noise)


def _conv_block(c_in: int, c_out: int, k: int, stride: int = 1, pool: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool > 1:
        layers.append(nn.MaxPool1d(pool))
    return nn.Sequential(*layers)


class MlpHead(nn.Module):
    """Dropout → Linear → ReLU → Dropout → Linear."""

    def __init__(self, d_in: int, hidden: int, k: int, p_in: float, p_hidden: float) -> None:
        super().__init__()
        self.drop_in = KeyedDropout(p_in, salt=1)
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop_hidden = KeyedDropout(p_hidden, salt=2)
        self.fc2 = nn.Linear(hidden, k)

    def forward(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        h = torch.relu(self.fc1(self.drop_in(h, noise)))
        return self.fc2(self.drop_hidden(h, noise))


_RR = {name: i for i, name in enumerate(RR_FEATURES)}
_MORPH = slice(len(RR_FEATURES), len(RR_FEATURES) + len(MORPH_FEATURES))
BEAT_SIDE = 9  # side features of a beat (beat_side_features)


def beat_side_features(aux: Tensor) -> Tensor:
    """float32[B, 9] side features of a beat from aux float32[B, A] (``features["beat"]``,
    :data:`models.data.mitdb.BEAT_FEATURES` then the template): the logs of pre, post and local RR over the stream's
    average, of pre/local and of post/pre (clipped at 5; every ratio floored at 1e-3), then the 3 template scores
    (correlation over the QRS and the window, log QRS energy ratio), then the log of the rhythm's irregularity
    (floored at 1e-3)."""

    def col(name: str) -> Tensor:
        return aux[:, _RR[name] : _RR[name] + 1]

    pre = col("pre_rr_s").clamp_min(1e-3)
    ratios = torch.cat([col("pre_avg"), col("post_avg"), col("local_avg"), col("pre_local"),
                        (col("post_rr_s") / pre).clamp_max(5.0)], dim=1).clamp_min(1e-3).log()
    return torch.cat([ratios, aux[:, _MORPH], col("irregularity").clamp_min(1e-3).log()], dim=1)


SIDE_FEATURES: dict[str, Callable[[Tensor], Tensor]] = {"beat": beat_side_features}


class EcgBeatNet(McModel):
    """AAMI beat classifier: 256-sample window at 360 Hz (R fiducial at index 96) plus the per-stream beat features.

    x: float32[B, 256] in mV (raw stream samples); aux: float32[B, 268] = features["beat"]
    (:data:`models.data.mitdb.BEAT_FEATURES`): 9 RR features normalised by the stream's running average RR, 3
    morphology features against the stream's running template, then that template (256 samples, median-removed).
    Per-patient adaptation: the convolutions see the beat and the beat minus the patient's usual beat, both divided
    by the template's RMS, so the patient's gain, baseline and usual morphology are factored out (with ``template``
    False the beat alone, divided by its own RMS). Side features: log of the RR intervals over the stream average
    (pre, post, local), of pre/local and of post/pre, the 3 template features and the log of the rhythm's
    irregularity (:func:`beat_side_features`); RR in seconds is left out on purpose (it does not transfer between
    patients).
    """

    arch = "ecg_beat_net"
    input_length = 256
    aux_dim = len(RR_FEATURES) + len(MORPH_FEATURES) + 256
    context = slice(len(RR_FEATURES) + len(MORPH_FEATURES), aux_dim)  # the running template of features["beat"]
    side_kind = "beat"

    def __init__(self, n_classes: int = 4, p: float = 0.5, width: int = 32, template: bool = True,
                 side_width: int = 0) -> None:
        super().__init__()
        self.arch_params = {"n_classes": n_classes, "p": p, "width": width, "template": template,
                            "side_width": side_width}
        self.template = template
        w = width
        self.features = nn.Sequential(
            _conv_block(2 if template else 1, w // 2, 7), _conv_block(w // 2, w, 5), _conv_block(w, w, 5),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(w * 32, 64), nn.ReLU(inplace=True))
        self.side_norm = nn.BatchNorm1d(BEAT_SIDE)
        # side_width > 0: the side features embedded in side_width units, so head dropout cannot erase the RR cues
        self.side = (nn.Sequential(nn.Linear(BEAT_SIDE, side_width), nn.ReLU(inplace=True)) if side_width
                     else nn.Identity())
        self.mlp = MlpHead(64 + (side_width or BEAT_SIDE), 64, n_classes, p_in=p, p_hidden=p)

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        assert aux is not None, f"EcgBeatNet needs the beat features (aux: float32[B, {self.aux_dim}])"
        x = x - row_median(x)
        if self.template:
            tpl = aux[:, self.context]
            scale = tpl.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-2)
            chans = torch.stack([x / scale, (x - tpl) / scale], dim=1)
        else:
            chans = (x / x.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-3)).unsqueeze(1)
        h = self.embed(self.features(chans))
        return torch.cat([h, self.side(self.side_norm(beat_side_features(aux)))], dim=1)

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        return self.mlp(h, noise)


class BearingFrameNet(McModel):
    """Bearing fault classifier on 1024-sample drive-end frames at 12 kHz (acceleration in g).

    Frames are standardised inside the model (zero mean, unit RMS); the log-RMS is kept as a side feature so the
    amplitude information survives. Wide first kernel (WDCNN-style) for the resonance bands.
    """

    arch = "bearing_frame_net"
    input_length = 1024

    def __init__(self, n_classes: int = 4, p: float = 0.5) -> None:
        super().__init__()
        self.arch_params = {"n_classes": n_classes, "p": p}
        self.features = nn.Sequential(
            _conv_block(1, 16, 64, stride=8),
            _conv_block(16, 32, 3),
            _conv_block(32, 64, 3),
            _conv_block(64, 64, 3, pool=1),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.mlp = MlpHead(64 + 1, 64, n_classes, p_in=p, p_hidden=p)

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        x = x - x.mean(dim=1, keepdim=True)
        rms = x.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        h = self.features((x / rms).unsqueeze(1))
        return torch.cat([h, rms.log()], dim=1)

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        return self.mlp(h, noise)


class PaperBearingNet(McModel):
    """Reference architecture of the paper's synthetic-bearing experiment (appendix), 200 samples, 2 classes.

    Conv1d(1,16,5) → ReLU → MaxPool2 → Conv1d(16,32,5) → ReLU → MaxPool2 | Dropout 0.3 → Linear(32·47, 2).
    """

    arch = "paper_bearing_net"
    input_length = 200

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.arch_params = {"n_classes": n_classes}
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 5), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(16, 32, 5), nn.ReLU(), nn.MaxPool1d(2),
            nn.Flatten(),
        )
        self.drop = KeyedDropout(0.3, salt=1)
        self.fc = nn.Linear(32 * 47, n_classes)

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        return self.features(x.unsqueeze(1))

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        return self.fc(self.drop(h, noise))


class PaperEcgNet(McModel):
    """Reference architecture of the paper's MIT-BIH binary experiment (appendix), 187 samples at 125 Hz.

    Conv1d(1,32,5) → ReLU → MaxPool2 → Conv1d(32,64,5) → ReLU → MaxPool2 | Dropout 0.3 → global average pool →
    Linear(64,64) → ReLU → Dropout 0.5 → Linear(64,2).
    """

    arch = "paper_ecg_net"
    input_length = 187

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.arch_params = {"n_classes": n_classes}
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 5), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(32, 64, 5), nn.ReLU(), nn.MaxPool1d(2)
        )
        self.drop_map = KeyedDropout(0.3, salt=1)
        self.fc1 = nn.Linear(64, 64)
        self.drop_hidden = KeyedDropout(0.5, salt=2)
        self.fc2 = nn.Linear(64, n_classes)

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        return self.features(x.unsqueeze(1))

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        h = self.drop_map(h, noise).mean(dim=2)
        return self.fc2(self.drop_hidden(torch.relu(self.fc1(h)), noise))


ARCHITECTURES: dict[str, type[McModel]] = {
    cls.arch: cls for cls in (EcgBeatNet, BearingFrameNet, PaperBearingNet, PaperEcgNet)
}


MEMBER_KEY_STRIDE = 0x2545F4914F6CDD1D  # odd 64-bit constant: member m draws its passes with keys + m · stride


class Ensemble(McModel):
    """``n_members`` independently trained copies of one architecture (a deep ensemble, Lakshminarayanan et al.
    2017), one McModel to the controller: logits float32[B, K] = the mean of the members' logits.

    trunk(x, aux) = the members' trunk features side by side, float32[B, sum of D_m]; head(h, noise) splits them
    back and runs every member's own dropout head. Member m draws its keyed masks from ``keys + m · stride``
    (wrapping int64), so the members' passes are independent of one another while every pass stays a pure function
    of (window key, pass index); member 0 sees exactly the passes a single model of its seed would. Averaging
    logits (not probabilities) keeps the controller's ``softmax(z̄ / T)`` and its temperature fit unchanged.

    Why: with one member the recipe's DS2 error moved from 7.9 % to 12.8 % between training seeds; averaging
    independently trained members is the standard remedy for that variance (Ovadia et al. 2019), and where the
    members disagree their mean logits are flatter, so SP falls there as well.
    """

    arch = "ensemble"

    def __init__(self, member_arch: str, member_params: dict, n_members: int) -> None:
        super().__init__()
        if n_members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {n_members}")
        cls = ARCHITECTURES[member_arch]
        self.arch_params = {"member_arch": member_arch, "member_params": dict(member_params), "n_members": n_members}
        self.members = nn.ModuleList(cls(**member_params) for _ in range(n_members))
        self.input_length, self.aux_dim, self.context = cls.input_length, cls.aux_dim, cls.context
        self.side_kind = cls.side_kind

    @property
    def n_heads(self) -> int:
        """One head per member."""
        return len(self.members)

    @classmethod
    def of(cls, members: list[McModel]) -> Ensemble:
        """An ensemble holding (copies of the weights of) trained ``members``, all of one architecture."""
        first = members[0]
        out = cls(first.arch, first.arch_params, len(members))
        for dst, src in zip(out.members, members, strict=True):
            dst.load_state_dict(src.state_dict())
        return out.to(next(first.parameters()).device).train(first.training)

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        return torch.cat([m.trunk(x, aux) for m in self.members], dim=1)

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        n = len(self.members)
        # the members' masks are drawn together (one hash and one bank gather per layer), each member's exactly as
        # member_noise would draw it alone
        noises = [None] * n if noise is None else noise.shifted([i * MEMBER_KEY_STRIDE for i in range(n)])
        out = None  # members share one architecture, so their trunk features are equally wide
        for m, hm, nm in zip(self.members, h.chunk(n, dim=1), noises, strict=True):
            z = m.head(hm, nm)
            out = z if out is None else out + z
        return out / n


def member_noise(noise: PassNoise, member: int) -> PassNoise:
    """The pass noise of ensemble member ``member``: keys shifted by ``member · MEMBER_KEY_STRIDE`` (mod 2⁶⁴)."""
    if member == 0:
        return noise
    return PassNoise(shift_keys(noise.keys, member * MEMBER_KEY_STRIDE), noise.step)


ARCHITECTURES[Ensemble.arch] = Ensemble


class SideExpert(McModel):
    """A model and a linear expert on its side features: logits float32[B, K] = the model's logits + ``weight`` ·
    log softmax(z Wᵀ + b), with z float32[B, S] the side features (``SIDE_FEATURES[model.side_kind]``) standardised
    by the training means and deviations, and W, b a class-balanced multinomial logistic regression fitted on them
    (``models.training.fit_side_expert``). With ``weight`` 1 the two are a product of experts.

    trunk(x, aux) = the model's trunk features, then z (float32[B, D + S]); head(h, noise) runs the model's head
    on the first D columns (all the dropout) and adds the expert's term, the same in every pass. z stays in the
    trunk features, so the novelty gate's density model sees what the expert reads.

    Why: trained jointly, the network lets each training patient's morphology outweigh the RR cues (the
    inter-patient literature's main carrier of supraventricular beats); an expert fitted on the side features
    alone cannot memorise morphology. Chosen on DS1 record-grouped folds (README, model selection).
    """

    arch = "side_expert"

    def __init__(self, base_arch: str, base_params: dict, n_classes: int, weight: float = 1.0) -> None:
        super().__init__()
        self.arch_params = {"base_arch": base_arch, "base_params": dict(base_params), "n_classes": n_classes,
                            "weight": weight}
        self.base = ARCHITECTURES[base_arch](**base_params)
        if self.base.side_kind is None:
            raise ValueError(f"{base_arch!r} has no side features for an expert to read")
        self.input_length, self.aux_dim, self.context = self.base.input_length, self.base.aux_dim, self.base.context
        self.side_kind, self.weight = self.base.side_kind, float(weight)
        n_side = SIDE_FEATURES[self.side_kind](torch.ones(1, self.aux_dim)).shape[1]
        self.register_buffer("mean", torch.zeros(n_side))
        self.register_buffer("scale", torch.ones(n_side))
        self.register_buffer("coef", torch.zeros(n_classes, n_side))
        self.register_buffer("intercept", torch.zeros(n_classes))

    @property
    def n_heads(self) -> int:
        """The model's heads (the expert's term is one small matmul)."""
        return self.base.n_heads

    def side_inputs(self, aux: Tensor) -> Tensor:
        """float32[B, S] standardised side features of aux float32[B, A]."""
        return (SIDE_FEATURES[self.side_kind](aux) - self.mean) / self.scale

    def trunk(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        assert aux is not None, "SideExpert needs the side features (aux)"
        return torch.cat([self.base.trunk(x, aux), self.side_inputs(aux)], dim=1)

    def head(self, h: Tensor, noise: PassNoise | None = None) -> Tensor:
        n = self.mean.numel()
        expert = torch.log_softmax(torch.addmm(self.intercept, h[:, -n:], self.coef.T), dim=1)
        return self.base.head(h[:, :-n], noise) + self.weight * expert


ARCHITECTURES[SideExpert.arch] = SideExpert
