"""The controller on a CUDA device: every tensor it uses lives there, and it decides as on the CPU.

Skipped where no GPU is visible (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``. The windows
are real ones: two DS2 records (beats centred on the annotated R peaks) and the CWRU load-0 test blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_marks import needs_data

from controller.evaluation import TEST_KEY_OFFSET
from controller.passes import eval_keys
from controller.sci import SciController
from models.checkpoint import load_checkpoint
from models.device import resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def _windows(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    if name == "mitdb":
        from models.data import mitdb

        beats = mitdb.load_beats(["200", "232"])  # DS2; V beats (200) and S beats (232) among the N
        return beats.x, beats.aux
    from models.data import cwru

    return cwru.load_frames("test", loads=(0,)).x, None


def _tensors(obj: object, depth: int = 3) -> list[torch.Tensor]:
    """The tensors held by ``obj`` and by the objects it holds (the gate's density models), ``depth`` levels."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth == 0 or not hasattr(obj, "__dict__"):
        return []
    return [t for v in vars(obj).values() for t in _tensors(v, depth - 1)]


def test_a_cuda_device_computes_in_full_float32() -> None:
    resolve_device("cuda")
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"  # torch's default is TF32 for convolutions
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


@pytest.mark.parametrize("name", [pytest.param("mitdb", marks=needs_data("mitdb")),
                                  pytest.param("cwru", marks=needs_data("cwru"))])
def test_controller_on_cuda_decides_as_on_cpu(name: str) -> None:
    x, aux = _windows(name)
    keys = eval_keys(len(x), TEST_KEY_OFFSET)
    model, card = load_checkpoint(name, "cpu")
    on_cpu = SciController.from_card(model, card, "cpu").classify(x, aux, keys)

    dev = resolve_device("cuda")
    gpu_model, _ = load_checkpoint(name, dev)
    ctrl = SciController.from_card(gpu_model, card, dev)
    tensors = [*ctrl.model.parameters(), *ctrl.model.buffers(), *_tensors(ctrl.decider.gate)]
    assert len(tensors) > 10 and all(t.device.type == "cuda" for t in tensors)  # nothing silently left on the CPU
    on_gpu = ctrl.classify(x, aux, keys)

    # full float32 on the GPU (resolve_device), but cuBLAS / cuDNN sum in another order than the CPU kernels: values
    # differ in the last bits, so a window whose SP or novelty sits exactly on a threshold could go the other way
    same_decision = (on_gpu.reason == on_cpu.reason) & (on_gpu.passes == on_cpu.passes)
    assert same_decision.mean() >= 0.998, f"{(~same_decision).sum()} of {len(x)} windows decided differently"
    assert (on_gpu.label == on_cpu.label).mean() >= 0.998
    np.testing.assert_allclose(on_gpu.sp[same_decision], on_cpu.sp[same_decision], atol=1e-5)
    np.testing.assert_allclose(on_gpu.novelty, on_cpu.novelty, rtol=1e-3, atol=1e-3)
    assert np.array_equal(on_gpu.quality, on_cpu.quality)


@needs_data("mitdb")
@needs_data("cwru")
def test_the_workers_models_serve_live_windows_on_cuda_as_on_cpu() -> None:
    """The worker's model thread (``ModelRuntime``, every default (modality, lead)) on the GPU, fed live windows:
    beats found by the streaming detector in two DS2 records and frames of two CWRU recordings."""
    from streams.replay import ecg_windows, vibration_windows
    from streams.runtime import ModelRuntime

    windows = [w for r in ("200", "232") for w in list(ecg_windows(r, start_ns=0))[:600]]
    windows += [w for f in (97, 105) for w in list(vibration_windows(f, start_ns=0))[:150]]  # normal, inner race
    on_gpu = ModelRuntime(resolve_device("cuda"))
    assert {str(s.controller.device) for s in on_gpu.models.values()} == {"cuda"}
    gpu, cpu = on_gpu.classify(windows), ModelRuntime("cpu").classify(windows)
    assert all(not isinstance(r, str) for r in gpu + cpu)  # every window served
    same = [(a.model, a.label, a.reason, a.passes) == (b.model, b.label, b.reason, b.passes)
            for a, b in zip(gpu, cpu, strict=True)]
    assert np.mean(same) >= 0.998, f"{len(same) - sum(same)} of {len(same)} windows decided differently"
    assert {r.model for r in gpu} == {"mitdb", "cwru"}
