"""models.reductions: the NumPy-backed row median is ATen's median, value for value."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.reductions import row_median

_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -0.0, 1.0]))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(1, 40)), elements=_values),
       st.booleans())
def test_row_median_is_atens_median(a, double):
    x = torch.from_numpy(a).double() if double else torch.from_numpy(a)
    expect = x.median(dim=1, keepdim=True).values
    got = row_median(x)
    assert got.dtype == expect.dtype and got.shape == expect.shape
    torch.testing.assert_close(got, expect, equal_nan=True, atol=0, rtol=0)


def test_row_median_of_real_sized_windows_and_of_tensors_that_need_a_gradient():
    x = torch.randn(64, 2048, generator=torch.Generator().manual_seed(0))
    assert torch.equal(row_median(x), x.median(dim=1, keepdim=True).values)
    w = x[:4, :256].clone().requires_grad_()
    row_median(w).sum().backward()  # ATen's path: the gradient reaches the median element of each row
    assert w.grad is not None and int(w.grad.sum()) == 4
