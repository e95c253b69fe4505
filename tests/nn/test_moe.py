"""Mixture of experts: routing rules, capacity and dropping, expert choice, dispatch equals a dense per-token
reference, the balance and z-losses, shared experts, per-layer patterns, bad configs."""

from __future__ import annotations

import math

import pytest
import torch

import groundup as gu
from groundup.nn.moe import MoE, RouterStats, router_loss


def _moe(router: str, k: int = 2, **kw) -> MoE:
    torch.manual_seed(0)
    return MoE(gu.Config(d_model=16, n_heads=2, d_ff=24, n_experts=5, top_k=k, router=router, ffn="swiglu", **kw))


def _reference(moe: MoE, x: torch.Tensor, keep=None) -> torch.Tensor:
    """Token by token: sum over the chosen experts of weight x expert(token); keep(t, e) says a slot survives."""
    flat = x.reshape(-1, x.shape[-1])
    weights, idx, _ = moe.route(flat)
    ref = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for w, e in zip(weights[t], idx[t].tolist(), strict=True):
            if keep is None or keep(t, e):
                ref[t] += w * moe.experts[e](flat[t])
    return ref


@pytest.mark.parametrize("router, k", [("topk_softmax", 2), ("softmax_topk", 2), ("switch", 1),
                                       ("topk_softmax", 5)])
def test_dispatch_equals_dense_reference(router, k):
    moe = _moe(router, k).eval()
    x = torch.randn(3, 7, 16)
    out, _ = moe(x)
    torch.testing.assert_close(out.reshape(-1, 16), _reference(moe, x), atol=1e-5, rtol=1e-5)
    assert moe.dropped.item() == 0 and moe.usage.sum().item() == 21 * k


def test_router_weights():
    x = torch.randn(50, 16)
    w, _idx, _probs = _moe("topk_softmax").route(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(50))  # Mixtral: renormalised over the chosen k
    w2, idx2, probs2 = _moe("softmax_topk").route(x)
    assert (w2.sum(-1) < 1).all()  # GShard/Qwen2-MoE: the chosen probabilities as they are
    torch.testing.assert_close(w2, probs2.gather(-1, idx2))


def _course_moe(capacity_factor: float) -> MoE:
    """3 experts on 3-dim tokens whose router logits are the tokens themselves: token t goes where its 1 is."""
    moe = MoE(gu.Config(d_model=3, n_heads=1, d_ff=4, n_experts=3, top_k=1, router="switch", ffn="relu",
                        capacity_factor=capacity_factor, mlp_bias=True)).eval()
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(3) * 4)
        for e, expert in enumerate(moe.experts):  # expert e adds e + 1 to every feature: outputs are never 0
            expert.up_proj.weight.zero_()
            expert.up_proj.bias.fill_(1.0)
            expert.down_proj.weight.fill_((e + 1) / 4)
            expert.down_proj.bias.zero_()
    return moe


def test_course_example_capacity_factor_one_drops_one_token_and_one_and_a_half_drops_none():
    """MIT lecture: 6 tokens, 3 experts. The router sends 3 tokens to expert 0, 2 to expert 1, 1 to expert 2.
    capacity factor 1.0 -> 6 / 3 x 1.0 = 2 slots: expert 0's third token is dropped and passes through on the
    residual (zero expert output); 1.5 -> 3 slots: all six are processed."""
    choice = [0, 0, 1, 0, 1, 2]
    x = torch.eye(3)[choice][None]  # [1, 6, 3]
    lines = []
    for cf, capacity, dropped in ((1.0, 2, [3]), (1.5, 3, [])):
        moe = _course_moe(cf)
        assert moe.capacity(6) == capacity
        out, _ = moe(x)
        got = [(t, choice[t] if out[0, t].abs().sum() > 0 else None) for t in range(6)]
        lines.append(f"capacity factor {cf}: capacity {capacity}; token -> expert (None = dropped): {got}")
        print(lines[-1])  # pytest -s shows the assignment
        assert [t for t, e in got if e is None] == dropped
        for t, e in got:
            if e is not None:  # a processed token carries its expert's output times its router probability
                p = torch.softmax(4 * x[0, t], -1)[e]
                torch.testing.assert_close(out[0, t], torch.full((3,), (e + 1) * 1.0) * p)
        assert moe.dropped.item() == len(dropped) and moe.usage.tolist() == [3 - len(dropped), 2, 1]
        assert moe.wanted.tolist() == [3, 2, 1]  # what the router asked for, before the capacity cut
    assert lines[0].endswith("[(0, 0), (1, 0), (2, 1), (3, None), (4, 1), (5, 2)]")


def test_capacity_priority_first_choices_before_second_and_groups_per_sequence():
    moe = _moe("topk_softmax", 2, capacity_factor=0.5, router_group="sequence").eval()
    x = torch.randn(2, 10, 16)
    out, _ = moe(x)
    flat = x.reshape(-1, 16)
    _, idx, _ = moe.route(flat)
    cap = moe.capacity(10)
    assert cap == math.ceil(2 * 10 * 0.5 / 5) == 2
    kept = set()
    for g in range(2):  # a sequence's slots: all first choices in order, then the second choices
        used = [0] * 5
        for j in range(2):
            for t in range(g * 10, g * 10 + 10):
                e = idx[t, j].item()
                if used[e] < cap:
                    used[e] += 1
                    kept.add((t, e))
    assert moe.dropped.item() > 0
    torch.testing.assert_close(out.reshape(-1, 16), _reference(moe, x, lambda t, e: (t, e) in kept),
                               atol=1e-5, rtol=1e-5)


def test_score_priority_keeps_the_surest_tokens():
    moe = _moe("switch", 1, capacity_factor=1.0, router_priority="score").eval()
    x = torch.randn(1, 20, 16)
    out, _ = moe(x)
    w, idx, _ = moe.route(x[0])
    cap = moe.capacity(20)
    kept = set()
    for e in range(5):
        mine = [t for t in range(20) if idx[t, 0] == e]
        kept |= {(t, e) for t in sorted(mine, key=lambda t: -w[t, 0].item())[:cap]}
    torch.testing.assert_close(out[0], _reference(moe, x, lambda t, e: (t, e) in kept), atol=1e-5, rtol=1e-5)


def test_expert_choice_fills_every_expert_exactly_and_matches_a_reference():
    moe = _moe("expert_choice", 2, capacity_factor=1.0, router_group="sequence",
               arch="seq2seq", n_layers=1, n_decoder_layers=1, moe_layers=[0]).eval()
    x = torch.randn(2, 10, 16)
    out, stats = moe(x)
    cap = moe.capacity(10)
    assert cap == 4 and moe.usage.tolist() == [2 * cap] * 5  # every expert: its capacity, in each sequence
    probs = torch.softmax(moe.logits(x.reshape(-1, 16)), -1).view(2, 10, 5)
    ref = torch.zeros(2, 10, 16)
    for g in range(2):
        for e in range(5):
            for t in torch.topk(probs[g, :, e], cap).indices.tolist():
                ref[g, t] += probs[g, t, e] * moe.experts[e](x[g, t])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert stats.balanced


def test_expert_choice_refused_in_a_causal_stack_without_opt_in():
    with pytest.raises(ValueError, match="expert_choice_causal"):
        gu.Config.preset("tiny-mixtral", router="expert_choice", capacity_factor=1.0)
    with pytest.raises(ValueError, match="expert_choice_causal"):  # a seq2seq decoder is causal too
        gu.Config(arch="seq2seq", d_model=16, n_heads=2, n_layers=1, n_decoder_layers=1, n_experts=4,
                  router="expert_choice", capacity_factor=1.0)
    gu.Config.preset("tiny-mixtral", router="expert_choice", capacity_factor=1.0, expert_choice_causal=True)
    gu.Config(arch="seq2seq", d_model=16, n_heads=2, n_layers=1, n_decoder_layers=1, n_experts=4,
              router="expert_choice", capacity_factor=1.0, moe_layers=[0])  # encoder only: fine


@pytest.mark.parametrize("changes, field", [
    (dict(n_experts=2, top_k=3), "top_k"), (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(capacity_factor=-1), "capacity_factor"), (dict(eval_capacity_factor=0), "eval_capacity_factor"),
    (dict(expert_capacity=0), "expert_capacity"), (dict(router="switch", top_k=2), "top_k"),
    (dict(router="expert_choice", expert_choice_causal=True), "capacity_factor"),
    (dict(moe_layers=[0, 9]), "moe_layers"), (dict(shared_expert_gate=True), "shared_expert_d_ff"),
    (dict(router_jitter=1.5), "router_jitter")])
def test_bad_moe_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        gu.Config.preset("tiny-mixtral", **changes)


def _stats(idx: torch.Tensor, probs: torch.Tensor) -> RouterStats:
    """One group of len(idx) tokens: the experts they chose [N, k] and their router probabilities [N, E]."""
    return RouterStats(probs.log(), probs, idx, 1, idx.shape[0])


def test_balance_loss_is_k_when_uniform_and_larger_when_skewed():
    cfg = gu.Config.preset("tiny-mixtral", router_aux_loss_coef=1.0)
    n, E = 1000, cfg.n_experts
    t = torch.arange(n)
    uniform = _stats(torch.stack([t % E, (t + 1) % E], -1), torch.full((n, E), 1 / E))
    assert router_loss(cfg, [uniform, uniform]).item() == pytest.approx(2.0)
    skewed = _stats(torch.tensor([[0, 1]]).expand(n, 2), torch.tensor([[0.6, 0.3, 0.05, 0.05]]).expand(n, E))
    assert router_loss(cfg, [skewed]).item() > 3.0
    # pooled over layers (transformers) vs per layer: two opposite skews balance when pooled
    flipped = _stats(E - 1 - skewed.idx, skewed.probs.flip(-1))
    pooled = router_loss(cfg.replace(balance_scope="stack"), [skewed, flipped]).item()
    per_layer = router_loss(cfg.replace(balance_scope="layer"), [skewed, flipped]).item()
    assert per_layer == pytest.approx(router_loss(cfg, [skewed]).item()) and pooled < per_layer


def test_z_loss_is_mean_logsumexp_squared():
    moe = _moe("switch", 1, router_aux_loss_coef=0.0, router_z_loss_coef=1.0).eval()
    x = torch.randn(2, 6, 16)
    _, stats = moe(x)
    want = (torch.logsumexp(moe.logits(x.reshape(-1, 16)), -1) ** 2).mean()
    torch.testing.assert_close(router_loss(moe.cfg, [stats]), want)


def test_model_returns_scaled_aux_loss():
    cfg = gu.Config.preset("tiny-mixtral", router_aux_loss_coef=0.5)
    model = gu.CausalLM(cfg)
    _, aux = model(torch.randint(0, 256, (2, 8)), return_aux_loss=True)
    assert 0.5 * 1.0 < aux.item() <= 0.5 * cfg.n_experts  # coef x (between ~k and E)
    dense = gu.CausalLM(gu.Config.preset("tiny-llama"))
    assert dense(torch.randint(0, 256, (1, 4)), return_aux_loss=True)[1].item() == 0.0


def test_shared_expert_pattern_and_fine_grained_width():
    cfg = gu.Config.preset("tiny-mixtral", n_layers=4, moe_layers=[1, 3], expert_d_ff=16, shared_expert_d_ff=40,
                           shared_expert_gate=True)
    model = gu.CausalLM(cfg).eval()
    kinds = [type(b.mlp).__name__ for b in model.blocks]
    assert kinds == ["GatedMLP", "MoE", "GatedMLP", "MoE"] and cfg.moe_layer_count == 2
    moe = model.blocks[1].mlp
    assert moe.experts[0].up_proj.out_features == 16 and moe.shared.up_proj.out_features == 40
    x = torch.randn(1, 5, cfg.d_model)
    out, _ = moe(x)
    routed = _reference(moe, x).view(1, 5, -1)
    flat = x.reshape(-1, cfg.d_model)
    shared = (moe.shared(flat) * torch.sigmoid(moe.shared_gate(flat))).view(1, 5, -1)
    torch.testing.assert_close(out, routed + shared, atol=1e-5, rtol=1e-5)


def test_jitter_and_noise_only_in_training_and_the_router_gets_gradients():
    moe = _moe("topk_softmax", 2, router_jitter=0.1, router_noise=True)
    x = torch.randn(2, 6, 16)
    moe.eval()
    a, b = moe(x)[0], moe(x)[0]
    assert torch.equal(a, b)
    moe.train()
    assert not torch.equal(moe(x)[0], moe(x)[0])
    out, stats = moe(x)
    (out.sum() + router_loss(moe.cfg, [stats])).backward()
    assert moe.router.weight.grad.abs().sum() > 0 and moe.noise.weight.grad.abs().sum() > 0


def test_eval_capacity_factor_applies_in_eval_mode():
    moe = _moe("switch", 1, capacity_factor=1.0, eval_capacity_factor=2.0)
    assert moe.train().capacity(10) == 2 and moe.eval().capacity(10) == 4
    assert _moe("switch", 1, expert_capacity=3, capacity_factor=9.0).capacity(100) == 3
