"""Fused lm_head + cross-entropy equals F.linear + F.cross_entropy in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup.nn.cross_entropy import cross_entropy, linear_cross_entropy


def _both(n: int, d: int, v: int, chunk: int, *, bias: bool, reduction: str, ignored: float, bf16: bool,
          seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) / d**0.5
    b = torch.randn(v, generator=g) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < ignored] = -100
    results = []
    for fused in (True, False):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if bias else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fused:
                loss = linear_cross_entropy(xs, ws, t, bs, reduction=reduction, chunk_size=chunk)
            else:
                loss = F.cross_entropy(F.linear(xs, ws, bs).float(), t, reduction=reduction)
        loss.backward()
        results.append((loss.detach(), xs.grad, ws.grad, bs.grad if bias else None))
    return results


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 12), v=st.integers(2, 50), chunk=st.integers(1, 48),
       bias=st.booleans(), reduction=st.sampled_from(["mean", "sum"]), ignored=st.sampled_from([0.0, 0.3]))
def test_fp32_equals_unfused(n, d, v, chunk, bias, reduction, ignored):
    (lf, xf, wf, bf), (lr, xr, wr, br) = _both(n, d, v, chunk, bias=bias, reduction=reduction, ignored=ignored,
                                                bf16=False)
    if lr.isnan():  # every target ignored: torch's mean is 0/0, ours is 0 (see the test below)
        assert lf.item() == 0.0 and not xf.any()
        return
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf, xr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wf, wr, rtol=1e-4, atol=1e-5)
    if bias:
        torch.testing.assert_close(bf, br, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_softcapped_logits_equal_unfused(bias):
    """Gemma 2's final-logit cap inside the fused loss: value and gradients equal capping the logits first."""
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(37, 16, generator=g) * 3, torch.randn(53, 16, generator=g)
    b = torch.randn(53, generator=g) if bias else None
    t = torch.randint(0, 53, (37,), generator=g)
    t[:5] = -100
    grads = []
    for fused in (True, False):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        if fused:
            loss = linear_cross_entropy(xs, ws, t, b, chunk_size=16, softcap=5.0)
        else:
            z = F.linear(xs, ws, b)
            assert z.abs().max() > 20  # the cap (5) binds hard
            loss = F.cross_entropy(torch.tanh(z / 5.0) * 5.0, t)
        loss.backward()
        grads.append((loss.detach(), xs.grad, ws.grad))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, w, t, b, softcap=5.0), grads[1][0], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_unfused():
    (lf, xf, wf, _), (lr, xr, wr, _) = _both(300, 64, 500, 128, bias=False, reduction="mean", ignored=0.1, bf16=True)
    assert xf.dtype == xr.dtype == torch.float32 and wf.dtype == torch.float32
    torch.testing.assert_close(lf, lr, rtol=1e-3, atol=1e-3)
    # Both round the logits' gradient to bf16 before the products; the fused path sums chunks in fp32.
    torch.testing.assert_close(xf, xr, rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(wf, wr, rtol=2e-2, atol=2e-4)


def test_all_ignored_mean_is_zero_with_zero_gradients():
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(7, 4, requires_grad=True)
    loss = linear_cross_entropy(x, w, torch.full((5,), -100))
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any() and not w.grad.any()


def test_no_grad_path_and_errors():
    x, w, t = torch.randn(2, 3, 4), torch.randn(9, 4), torch.randint(0, 9, (2, 3))
    with torch.no_grad():
        got = linear_cross_entropy(x, w, t, chunk_size=2)
    torch.testing.assert_close(got, F.cross_entropy(F.linear(x, w).reshape(6, 9), t.reshape(6)))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(x, w, t, reduction="none")
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(x, w, t[:, :2])


def test_transposed_logits_cross_entropy():
    logits_t = torch.randn(11, 6)  # [V, N] contiguous: the layout groundup's CPU lm_head returns
    t = torch.randint(0, 11, (6,))
    torch.testing.assert_close(cross_entropy(logits_t.t(), t), F.cross_entropy(logits_t.t().contiguous(), t))


@pytest.mark.parametrize("cfg", [dict(), dict(tie_embeddings=False, lm_head_bias=True),
                                 dict(lm_head_scale="inv_sqrt_d"), dict(logit_softcap=0.5, pos="rope")])
def test_model_targets_equal_logits_loss(cfg):
    """model(ids, targets=y) is the loss of model(ids): same value, same gradient on every parameter."""
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32,
                                  **cfg))
    ids = torch.randint(0, 61, (3, 17))
    y = ids[:, 1:].clone()
    y[0, :4] = -100
    model(ids[:, :-1], targets=y).backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids[:, :-1])
    F.cross_entropy(logits.reshape(-1, 61), y.reshape(-1)).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
