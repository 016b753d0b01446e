"""Row reductions on the hot path of the trunk and of the input checks, faster than ATen's on the CPU."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def row_median(x: Tensor) -> Tensor:
    """float[B, 1]: the lower median of each row of ``x`` float[B, L], exactly ``x.median(dim=1, keepdim=True).values``
    (the ⌊(L − 1)/2⌋-th smallest; NaN in a row that holds one).

    Hand-written because NumPy's introselect (``np.partition``) returns the same values 2–9× faster than ATen's CPU
    median along a dim (one thread, this project's 2-core machine: 1,024 rows of 2,048 samples 4.5 ms against 31 ms,
    64 rows of 2,048 0.2 against 1.9 ms, 64 rows of 256 0.09 against 0.17 ms). Other devices, other dtypes and
    tensors that need a gradient keep ATen's.

    >>> x = torch.tensor([[3.0, 1.0, 2.0, 4.0], [0.0, float("nan"), 1.0, 2.0]])
    >>> row_median(x).flatten().tolist()[0], row_median(x).flatten().isnan().tolist()[1]
    (2.0, True)
    >>> torch.equal(row_median(x[:1]), x[:1].median(dim=1, keepdim=True).values)
    True
    """
    if x.device.type != "cpu" or x.requires_grad or x.dtype not in (torch.float32, torch.float64) or not x.shape[1]:
        return x.median(dim=1, keepdim=True).values
    k = (x.shape[1] - 1) // 2
    m = torch.from_numpy(np.partition(x.numpy(), k, axis=1)[:, k : k + 1])
    odd = x.sum(1).isnan()  # a NaN in the row (or both infinities): ATen's median there (a sum is 20x cheaper
    if bool(odd.any()):     # than isnan().any() on these rows)
        m[odd] = x[odd].median(dim=1, keepdim=True).values
    return m
