"""groundup.nn.Linear's CPU product paths all equal F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groundup.nn.linear import GEMV_TOKENS, Linear, split_linear


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("out_f", [7, 64, 97])
@pytest.mark.parametrize("m", [1, 3, 4, 5, GEMV_TOKENS])
def test_split_linear_equals_linear(threads, out_f, m):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(out_f * 10 + m)
        w, b, x = torch.randn(out_f, 33, generator=g), torch.randn(out_f, generator=g), torch.randn(m, 33, generator=g)
        torch.testing.assert_close(split_linear(w, x, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(split_linear(w, x), F.linear(x, w), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 1, 16), (1, 5, 16), (3, 16), (2, 9, 16), (3, 11, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_paths_equal_f_linear(shape, bias):
    """Decode-sized inputs (split rows), prefill-sized (weight-major), under autocast too."""
    torch.manual_seed(0)
    lin = Linear(16, 40, bias=bias)
    x = torch.randn(shape)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = lin(x), F.linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    transposed = Linear(16, 40, bias=bias)
    transposed.weight = torch.nn.Parameter(lin.weight.detach().t().contiguous().t())  # a non-contiguous weight
    transposed.bias = lin.bias
    torch.testing.assert_close(transposed(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
