"""CausalLM invariants: every Config switch builds, trains and respects causality; kernels agree end to end."""

from __future__ import annotations

import pytest
import torch

import groundup as gu

BASE = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32)

VARIANTS = {
    "learned": dict(pos="learned"),
    "learned-offset": dict(pos="learned", pos_offset=2),
    "sinusoidal": dict(pos="sinusoidal"),
    "rope": dict(pos="rope"),
    "rope-partial": dict(pos="rope", rotary_fraction=0.25),
    "rope-linear": dict(pos="rope", rope_scaling="linear", rope_scaling_factor=2.0),
    "rope-ntk": dict(pos="rope", rope_scaling="ntk", rope_scaling_factor=2.0),
    "alibi": dict(pos="alibi"),
    "nopos": dict(pos="none"),
    "relu": dict(ffn="relu"), "gelu": dict(ffn="gelu"), "gelu_tanh": dict(ffn="gelu_tanh"), "silu": dict(ffn="silu"),
    "swiglu": dict(ffn="swiglu"), "geglu": dict(ffn="geglu"), "reglu": dict(ffn="reglu"),
    "rmsnorm": dict(norm="rmsnorm", norm_eps=1e-6),
    "layernorm-nobias": dict(norm_bias=False),
    "post-norm": dict(norm_placement="post", final_norm=False),
    "parallel": dict(residual="parallel"),
    "parallel-shared": dict(residual="parallel", shared_norm=True),
    "no-biases": dict(attn_bias=False, attn_out_bias=False, mlp_bias=False),
    "lm-head-bias-untied": dict(lm_head_bias=True, tie_embeddings=False),
    "gqa": dict(n_kv_heads=2), "mqa": dict(n_kv_heads=1), "head-dim": dict(head_dim=16),
    "sliding": dict(sliding_window=3, pos="rope"),
    "bidirectional": dict(causal=False),
    "dropout": dict(dropout=0.1, attn_dropout=0.1),
    "moe-topk-softmax": dict(n_experts=4, top_k=2, router="topk_softmax", ffn="swiglu"),
    "moe-softmax-topk": dict(n_experts=4, top_k=1, router="softmax_topk"),
    "eager": dict(attn_kernel="eager"), "flash": dict(attn_kernel="flash", flash_block_size=4),
}


def _model(**kw) -> gu.CausalLM:
    torch.manual_seed(0)
    return gu.CausalLM(gu.Config(**{**BASE, **kw}))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_forward_backward_and_causality(name):
    model = _model(**VARIANTS[name])
    ids = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(1))
    logits, aux = model(ids, return_aux_loss=True)
    assert logits.shape == (2, 10, 61) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 61), ids[:, 1:].reshape(-1)) + aux
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    model.eval()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 61
    with torch.no_grad():
        a, b = model(ids), model(changed)
    if model.config.causal:
        torch.testing.assert_close(a[:, :-1], b[:, :-1])  # the future never leaks into the past
    else:
        assert not torch.allclose(a[:, 0], b[:, 0])


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "sinusoidal"])
@pytest.mark.parametrize("window", [None, 4])
def test_kernels_agree_end_to_end(pos, window):
    model = _model(pos=pos, sliding_window=window, n_kv_heads=2).eval()
    ids = torch.randint(0, 61, (2, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model.set_attn_kernel("eager")(ids)
        for kernel in ("sdpa", "flash"):
            torch.testing.assert_close(model.set_attn_kernel(kernel)(ids), ref, atol=1e-5, rtol=0)


def test_sliding_window_bounds_what_one_layer_sees():
    model = _model(pos="rope", sliding_window=3, n_layers=1).eval()
    ids = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 61
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert not torch.allclose(a[0, 2], b[0, 2])  # position 2 still sees position 0
    torch.testing.assert_close(a[0, 3:], b[0, 3:])  # positions >= 3 do not


def test_overfits_one_batch():
    model = _model(pos="rope", ffn="swiglu", norm="rmsnorm", n_kv_heads=2)
    ids = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 61), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_attention_weights_for_plotting():
    model = _model(pos="rope").eval()
    ids = torch.randint(0, 61, (1, 7))
    w = model.attention_weights(ids, layer=1)
    assert w.shape == (1, 4, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 7))
    assert (w.triu(1) == 0).all()
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        model.attention_weights(ids, layer=5)


def test_dropout_only_in_training():
    model = _model(dropout=0.3, attn_dropout=0.3)
    ids = torch.randint(0, 61, (1, 8))
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


def test_tied_embeddings_share_storage():
    model = _model(tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_bf16_forward():
    model = _model(pos="rope", norm="rmsnorm").to(torch.bfloat16).eval()
    out = model(torch.randint(0, 61, (2, 9)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_position_ids_shift_learned_positions():
    model = _model().eval()
    ids = torch.randint(0, 61, (1, 5))
    with torch.no_grad():
        full = model(torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1), attention_mask=torch.tensor(
            [[0, 0, 0, 1, 1, 1, 1, 1]]), position_ids=torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]]))
        torch.testing.assert_close(full[:, 3:], model(ids), atol=1e-5, rtol=0)


def test_seq2seq_applies_the_logit_softcap_as_the_decoder_does():
    """logit_softcap caps an encoder-decoder's logits too (cap tanh(x / cap)), through the one LM head."""
    torch.manual_seed(0)
    plain = gu.Seq2Seq(gu.Config.preset("tiny-t5")).eval()
    capped = gu.Seq2Seq(plain.config.replace(logit_softcap=0.02)).eval()
    capped.load_state_dict(plain.state_dict())
    src, tgt = torch.randint(0, 256, (2, 5)), torch.randint(0, 256, (2, 4))
    with torch.no_grad():
        want = plain(input_ids=src, decoder_input_ids=tgt)
        got = capped(input_ids=src, decoder_input_ids=tgt)
    assert want.abs().max() > 0.04  # the cap binds
    torch.testing.assert_close(got, 0.02 * torch.tanh(want / 0.02))
