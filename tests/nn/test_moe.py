"""Mixture of experts: routing rules, dispatch equals a dense per-token reference, balance loss."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.nn.moe import MoE


def _moe(router: str, k: int = 2) -> MoE:
    torch.manual_seed(0)
    return MoE(gu.Config(d_model=16, n_heads=2, d_ff=24, n_experts=5, top_k=k, router=router, ffn="swiglu"))


@pytest.mark.parametrize("router, k", [("topk_softmax", 2), ("softmax_topk", 2), ("softmax_topk", 1),
                                       ("topk_softmax", 5)])
def test_dispatch_equals_dense_reference(router, k):
    moe = _moe(router, k)
    x = torch.randn(3, 7, 16)
    out, _ = moe(x)
    flat = x.reshape(-1, 16)
    logits = moe.router(flat)
    probs = torch.softmax(logits, -1)
    ref = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        top = torch.topk(logits[t], k).indices
        w = torch.softmax(logits[t, top], -1) if router == "topk_softmax" else probs[t, top]
        for wi, e in zip(w, top.tolist(), strict=True):
            ref[t] += wi * moe.experts[e](flat[t])
    torch.testing.assert_close(out.reshape(-1, 16), ref, atol=1e-5, rtol=1e-5)


def test_router_weights():
    x = torch.randn(50, 16)
    w, _idx, _probs = _moe("topk_softmax").route(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(50))  # Mixtral: renormalised over the chosen k
    w2, idx2, probs2 = _moe("softmax_topk").route(x)
    assert (w2.sum(-1) < 1).all()  # Switch/GShard: the chosen probabilities as they are
    torch.testing.assert_close(w2, probs2.gather(-1, idx2))


def test_balance_loss_is_k_when_uniform_and_larger_when_skewed():
    moe = _moe("topk_softmax", 2)
    n, E = 1000, 5
    idx = torch.stack([torch.arange(n) % E, (torch.arange(n) + 1) % E], -1)
    uniform = torch.full((n, E), 1 / E)
    assert moe.balance_loss(idx, uniform).item() == pytest.approx(2.0)
    skewed_idx = torch.zeros(n, 2, dtype=torch.long)
    skewed_idx[:, 1] = 1
    skewed_p = torch.tensor([0.6, 0.3, 0.05, 0.03, 0.02]).expand(n, E)
    assert moe.balance_loss(skewed_idx, skewed_p).item() > 4.0


def test_model_returns_scaled_aux_loss():
    cfg = gu.Config.preset("tiny-mixtral", router_aux_loss_coef=0.5)
    model = gu.CausalLM(cfg)
    _, aux = model(torch.randint(0, 256, (2, 8)), return_aux_loss=True)
    assert 0.5 * 1.0 < aux.item() <= 0.5 * cfg.n_experts  # coef x (between ~k and E)
    dense = gu.CausalLM(gu.Config.preset("tiny-llama"))
    assert dense(torch.randint(0, 256, (1, 4)), return_aux_loss=True)[1].item() == 0.0
