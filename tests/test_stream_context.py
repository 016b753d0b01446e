"""The stream-context input check: the polarity of the stream's running template, declared by the model, fitted on
training windows, one code path from the model's side features to the decision."""

import numpy as np
import pytest
import scipy.stats
import torch

from controller.decision import Decider, Gate, decide, evidence, stream_context
from controller.engine import SciConfig
from controller.policies import Threshold
from controller.quality import POLARITY_MARGIN, Q_LO, QualityFlag, check, fit_ranges, signal_stats, skewness
from controller.reasons import Reason
from models.architectures import BearingFrameNet, EcgBeatNet, McModel
from models.controller_card import QualityRanges
from models.data import mitdb
from models.data.morph import MORPH_FEATURES
from models.data.rr import RR_FEATURES

FS, L = 360.0, 256
T = np.arange(L) / FS


def _upright(n: int, seed: int) -> np.ndarray:
    """MLII-like templates float32[n, L]: a tall narrow R wave, a small S dip, a T wave; gains ×0.5–2."""
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.5, 2.0, (n, 1))
    r = np.exp(-(((T - 0.267) / 0.01) ** 2))
    s = -0.2 * np.exp(-(((T - 0.29) / 0.01) ** 2))
    tw = rng.uniform(0.15, 0.35, (n, 1)) * np.exp(-(((T - 0.5) / 0.05) ** 2))
    return (gain * (r + s + tw) + 0.01 * rng.standard_normal((n, L))).astype(np.float32)


def _stats(x: np.ndarray, context: np.ndarray | None):
    return signal_stats(torch.tensor(x), None if context is None else torch.tensor(context))


def test_skewness_matches_scipy():
    t = _upright(50, seed=4)
    np.testing.assert_allclose(skewness(torch.tensor(t)).numpy(), scipy.stats.skew(t, axis=1), rtol=1e-4)


def test_polarity_bound_is_the_training_quantile_minus_the_margin():
    tpl = _upright(2000, seed=0)
    ranges = fit_ranges(_stats(tpl, tpl))
    expected = np.quantile(scipy.stats.skew(tpl.astype(np.float64), axis=1), Q_LO) - POLARITY_MARGIN
    assert ranges.polarity == pytest.approx(expected, abs=1e-4)
    assert ranges.polarity > 1.0  # upright templates are strongly right-skewed


def test_an_inverted_or_other_lead_template_fails_and_an_ordinary_one_passes():
    train = _upright(2000, seed=0)
    ranges = fit_ranges(_stats(train, train))
    assert ranges.train_flag_rate <= 0.005
    new = _upright(200, seed=1)  # new "patients": other gains and T waves
    x = new  # the beats themselves are ordinary; only the stream's template changes below
    assert (check(_stats(x, new), ranges) == 0).all()
    assert (check(_stats(x, new * 3.0 + 0.5), ranges) == 0).all()  # gain and offset do not matter
    flags = check(_stats(x, -new), ranges)  # the whole stream inverted: every beat's template fails
    assert (flags == int(QualityFlag.POLARITY)).all()
    rs = 0.3 * np.exp(-(((T - 0.255) / 0.008) ** 2)) - np.exp(-(((T - 0.275) / 0.012) ** 2))  # V1-like rS complex
    assert QualityFlag(int(check(_stats(x[:1], rs[None].astype(np.float32)), ranges)[0])) == QualityFlag.POLARITY


def test_without_a_context_there_is_no_polarity_check():
    train = _upright(500, seed=0)
    stats = _stats(train, None)
    assert torch.isnan(stats.polarity).all()
    assert fit_ranges(stats).polarity is None
    # a card from before the check (no "polarity" key) loads without a bound and never flags polarity
    old = {k: v for k, v in fit_ranges(_stats(train, train)).__dict__.items() if k != "polarity"}
    loaded = QualityRanges.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in old.items()})
    assert loaded.polarity is None
    assert (check(_stats(train[:20], -train[:20]), loaded) == 0).all()


def test_models_declare_their_stream_context():
    assert BearingFrameNet.context is None
    beat = EcgBeatNet.context  # the running template of the ECG contract's features["beat"]
    assert (beat.start, beat.stop) == (len(RR_FEATURES) + len(MORPH_FEATURES), mitdb.BEAT_AUX)
    assert beat.stop - beat.start == mitdb.WINDOW == EcgBeatNet.input_length
    aux = torch.arange(2 * mitdb.BEAT_AUX, dtype=torch.float32).reshape(2, -1)
    assert torch.equal(stream_context(EcgBeatNet(), aux), aux[:, beat])
    assert stream_context(BearingFrameNet(), None) is None


class _ContextNet(McModel):
    """Toy model whose aux is the stream's template; the head always says class 0 with confidence."""

    arch = "toy_context"
    input_length = L
    aux_dim = L
    context = slice(0, L)

    def trunk(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, :2]

    def head(self, h: torch.Tensor, noise=None) -> torch.Tensor:
        return torch.stack([torch.full_like(h[:, 0], 6.0), torch.zeros_like(h[:, 0])], dim=1)


def test_an_inverted_stream_abstains_with_signal_quality_polarity_and_spends_no_pass():
    train = _upright(2000, seed=0)
    ranges = fit_ranges(_stats(train, train))
    model = _ContextNet()
    beats = _upright(2, seed=5)
    aux = torch.tensor(np.stack([beats[0], -beats[1]]))  # stream 2 is inverted: its template points down
    x = torch.tensor(np.stack([beats[0], -beats[1]]))
    ev = evidence(model, x, aux)
    assert ev.signal.polarity[0] > ranges.polarity > ev.signal.polarity[1]
    seen: set[int] = set()

    def sampler(idx: torch.Tensor, t: int) -> torch.Tensor:
        seen.update(idx.tolist())
        return model.head(ev.trunk[idx])

    d = Decider(Threshold(sp_star=0.8, t_min=2), SciConfig(1.0, 6, 0.85), Gate(ranges))
    r = decide(ev, sampler, d)
    assert [Reason(c) for c in r.reason] == [Reason.THRESHOLD, Reason.SIGNAL_QUALITY]
    assert r.quality.tolist() == [0, int(QualityFlag.POLARITY)] and r.passes.tolist() == [2, 0] and seen == {0}
    assert r.abstained.tolist() == [False, True]


def test_the_live_controller_takes_the_same_path():
    """SciController.classify (the worker's call) reads the context from aux exactly as evaluate does."""
    from controller.sci import SciController

    train = _upright(2000, seed=0)
    ranges = fit_ranges(_stats(train, train))
    beats = _upright(4, seed=6)
    sign = np.array([1.0, -1.0, 1.0, -1.0], np.float32)[:, None]
    ctl = SciController(_ContextNet(), Threshold(sp_star=0.8, t_min=2), SciConfig(1.0, 6, 0.85), gate=Gate(ranges))
    r = ctl.classify(beats * sign, beats * sign, np.arange(4, dtype=np.int64))
    assert [Reason(c).label for c in r.reason] == ["threshold", "signal_quality"] * 2
    assert [QualityFlag(int(q)).names() for q in r.quality] == [[], ["polarity"]] * 2


def test_the_shift_report_counts_windows_per_failed_check():
    from controller.shift import _rates

    c = {"abstained": np.array([False, True, True, False]), "wrong": np.array([True, True, False, False]),
         "det_wrong": np.array([True, True, True, False]),
         "quality": np.array([0, int(QualityFlag.POLARITY), int(QualityFlag.POLARITY | QualityFlag.AMPLITUDE), 0])}
    r = _rates(c)
    assert r["checks"] == {"amplitude": 0.25, "polarity": 0.5}
    assert (r["escalation_rate"], r["answered_wrong_rate"], r["deterministic_answered_wrong_rate"]) == (0.5, 0.25,
                                                                                                         0.75)
