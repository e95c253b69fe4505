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


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_every_candidate_and_the_tuned_choice_equal_f_linear(grad, rows):
    """Each path the tuner may pick, and the tuned forward (with gradients: its backward too)."""
    from groundup.nn import autotune

    torch.manual_seed(rows)
    lin = Linear(24, 40)
    x = torch.randn(2, rows, 24, requires_grad=grad)
    want = F.linear(x, lin.weight, lin.bias)
    for name in ("plain", "weight_major", "split"):
        torch.testing.assert_close(lin._run(name, x), want, rtol=1e-5, atol=1e-5, msg=name)
    autotune.reset()
    with autotune.enabled(True), torch.set_grad_enabled(grad):
        got = lin(x)
        assert any(k[0] == "linear" for k in autotune.decisions())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if grad:
        g_got = torch.autograd.grad(got.sum(), [x, lin.weight])
        g_want = torch.autograd.grad(want.sum(), [x, lin.weight])
        for a, b in zip(g_got, g_want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
