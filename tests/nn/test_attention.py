"""Attention: the course's worked example, three kernels agreeing, masks, RoPE and ALiBi properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup.nn.attention import Attention, MaskSpec, eager_attention, flash_attention, sdpa_attention
from groundup.nn.position import alibi_slopes, apply_rope, rope_cos_sin, rope_inv_freq


def test_course_worked_example():
    """Inputs [2,0],[0,2]; Wq, Wk, Wv from the course: first-token scores are [24, 8] before 1/sqrt(3)."""
    cfg = gu.Config(d_model=2, n_heads=1, head_dim=3, vocab_size=4, n_layers=1, attn_bias=False,
                    attn_out_bias=False, causal=False, pos="none", attn_kernel="eager")
    attn = Attention(cfg)
    wq = torch.tensor([[0.0, 1, 2], [0, 0, 2]])
    wk = torch.tensor([[1.0, 2, 2], [1, 0, 1]])
    wv = torch.tensor([[1.0, 2, 0], [0, 0, 1]])
    with torch.no_grad():  # nn.Linear stores W^T: y = x W
        attn.q_proj.weight.copy_(wq.T)
        attn.k_proj.weight.copy_(wk.T)
        attn.v_proj.weight.copy_(wv.T)
    x = torch.tensor([[[2.0, 0], [0, 2]]])  # [B=1, T=2, C=2]
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    assert q[0, 0].tolist() == [0, 2, 4] and k[0].tolist() == [[2, 4, 4], [2, 0, 2]]
    assert v[0].tolist() == [[2, 4, 0], [0, 0, 2]]
    assert (q[0, 0] @ k[0].T).tolist() == [24.0, 8.0]
    _, weights = attn(x, MaskSpec(causal=False), return_weights=True)
    want = torch.softmax(torch.tensor([24.0, 8.0]) / math.sqrt(3), dim=0)
    torch.testing.assert_close(weights[0, 0, 0], want)
    out = weights[0, 0, 0] @ v[0]
    torch.testing.assert_close(out, want[0] * torch.tensor([2.0, 4, 0]) + want[1] * torch.tensor([0.0, 0, 2]))


def _qkv(B=2, H=4, K=2, T=37, S=None, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = S or T
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, K, S, D, generator=g),
            torch.randn(B, K, S, D, generator=g))


MASKS = {
    "causal": dict(causal=True),
    "bidirectional": dict(causal=False),
    "sliding": dict(causal=True, window=5),
    "alibi": dict(causal=True, alibi=True),
    "alibi-bidirectional": dict(causal=False, alibi=True),
    "padding": dict(causal=True, padding=True),
    "sliding-alibi-padding": dict(causal=True, window=7, alibi=True, padding=True),
}


def _mask(spec: dict, B: int, H: int, S: int, q_offset: int = 0) -> MaskSpec:
    pad = None
    if spec.get("padding"):
        pad = torch.ones(B, S, dtype=torch.bool)
        pad[0, :6] = False  # left padding on the first row
    return MaskSpec(causal=spec["causal"], window=spec.get("window"), q_offset=q_offset, key_padding=pad,
                    alibi_slopes=alibi_slopes(H) if spec.get("alibi") else None)


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_kernels_agree(name, heads):
    H, K = heads
    q, k, v = _qkv(H=H, K=K)
    mask = _mask(MASKS[name], 2, H, 37)
    # Queries that see no key at all (left padding under a causal mask) have no defined output; compare the rest.
    seen = _visible(mask, 2, 37)
    ref, _ = eager_attention(q, k, v, mask, scale=0.3)
    torch.testing.assert_close(sdpa_attention(q, k, v, mask, scale=0.3)[seen], ref[seen], atol=1e-5, rtol=0)
    for block in (4, 16, 64):  # tiles smaller than, around and larger than the sequence
        out = flash_attention(q, k, v, mask, scale=0.3, block=block)
        torch.testing.assert_close(out[seen], ref[seen], atol=1e-5, rtol=0)


def _visible(mask: MaskSpec, B: int, T: int) -> torch.Tensor:
    """[B, H, T] bool: the query has at least one visible key."""
    bias = mask.bias(0, T, 0, T, torch.float32, torch.device("cpu"))
    if bias is None:
        return torch.ones(B, 1, T, dtype=torch.bool).expand(B, 4, T)
    return (bias > torch.finfo(torch.float32).min).any(-1).expand(B, 4, T)


def test_kernels_agree_with_query_offset():
    """Decode-style shapes: 3 queries at the end of 40 keys (what a KV cache produces)."""
    q, k, v = _qkv(T=3, S=40)
    for spec in (MASKS["causal"], MASKS["sliding"], MASKS["alibi"]):
        mask = _mask(spec, 2, 4, 40, q_offset=37)
        ref, _ = eager_attention(q, k, v, mask, scale=0.3)
        torch.testing.assert_close(sdpa_attention(q, k, v, mask, scale=0.3), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(flash_attention(q, k, v, mask, scale=0.3, block=8), ref, atol=1e-5, rtol=0)


def test_eager_matches_textbook_formula():
    q, k, v = _qkv(H=2, K=2, T=6)
    mask = MaskSpec(causal=True)
    out, w = eager_attention(q, k, v, mask, scale=1 / math.sqrt(8), return_weights=True)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(w, torch.softmax(scores, -1))
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6))


def test_flash_skips_hidden_tiles_and_never_builds_full_scores(monkeypatch):
    """With a sliding window, flash computes only the tiles near the diagonal, each at most block x block."""
    q, k, v = _qkv(B=1, H=2, K=2, T=64)
    mask = MaskSpec(causal=True, window=8)
    seen = []
    original = MaskSpec.bias

    def spy(self, q0, q1, k0, k1, dtype, device):
        seen.append((q1 - q0, k1 - k0, k0 // 8, q0 // 8))
        return original(self, q0, q1, k0, k1, dtype, device)

    monkeypatch.setattr(MaskSpec, "bias", spy)
    flash_attention(q, k, v, mask, scale=0.3, block=8)
    assert all(tq <= 8 and tk <= 8 for tq, tk, _, _ in seen)
    assert len(seen) == 8 + 7  # the diagonal tile and the one before it, for each of 8 query tiles
    assert all(qi - ki in (0, 1) for _, _, ki, qi in seen)


def test_sliding_window_semantics():
    """Each query sees itself and the window-1 keys before it."""
    mask = MaskSpec(causal=True, window=3)
    allowed = mask.bias(0, 6, 0, 6, torch.float32, torch.device("cpu"))[0, 0] == 0
    want = torch.tensor([[j <= i and i - j < 3 for j in range(6)] for i in range(6)])
    assert torch.equal(allowed, want)


def test_fully_masked_rows_are_finite_in_every_kernel():
    q, k, v = _qkv(B=1, H=2, K=2, T=5)
    pad = torch.tensor([[False, False, True, True, True]])
    mask = MaskSpec(causal=True, key_padding=pad)
    for out in (eager_attention(q, k, v, mask, scale=0.3)[0], sdpa_attention(q, k, v, mask, scale=0.3),
                flash_attention(q, k, v, mask, scale=0.3, block=2)):
        assert torch.isfinite(out).all()


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 12 heads: the 8 slopes of n=8, then every other slope of n=16 (Press et al., 2022, appendix)
    want = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 + i) for i in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(want))
    # independent reference: BLOOM's ALiBi in transformers (bias at key distance 1 equals the slope)
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for n in (1, 5, 12, 16, 71):
        ref = build_alibi_tensor(torch.ones(1, 2), n, torch.float32)[:, 0, 1]
        torch.testing.assert_close(alibi_slopes(n), ref)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(0, 500))
def test_rope_scores_depend_only_on_relative_position(m, n, shift):
    """<R(m) q, R(n) k> = <R(m+s) q, R(n+s) k>: RoPE encodes relative positions (Su et al., 2021).

    Angles are computed in fp32 (as the checkpoints expect), hence the 1e-5 tolerance.
    """
    cfg = gu.Config(d_model=32, n_heads=2, pos="rope", rotary_fraction=0.5)
    g = torch.Generator().manual_seed(m * 1000 + n)
    q, k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 16, generator=g,
                                                                                   dtype=torch.float64)

    def score(a: int, b: int) -> torch.Tensor:
        ca, sa = rope_cos_sin(cfg, torch.tensor([a]), torch.float64)
        cb, sb = rope_cos_sin(cfg, torch.tensor([b]), torch.float64)
        return (apply_rope(q, ca, sa) * apply_rope(k, cb, sb)).sum()

    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-5, rtol=1e-5)


def test_rope_scaling_variants():
    cfg = gu.Config(d_model=32, n_heads=2, pos="rope")
    pos = torch.arange(10)
    lin = gu.Config(d_model=32, n_heads=2, pos="rope", rope_scaling="linear", rope_scaling_factor=4.0)
    # linear interpolation: position p under factor 4 looks like position p/4 unscaled
    torch.testing.assert_close(rope_cos_sin(lin, pos * 4, torch.float32)[0], rope_cos_sin(cfg, pos, torch.float32)[0],
                               atol=1e-5, rtol=0)
    ntk = gu.Config(d_model=32, n_heads=2, pos="rope", rope_scaling="ntk", rope_scaling_factor=4.0)
    f0, f1 = rope_inv_freq(cfg), rope_inv_freq(ntk)
    torch.testing.assert_close(f1[0], f0[0])  # highest frequency untouched
    # lowest frequency stretched by exactly the factor: base theta * 4^(d/(d-2)) at exponent (d-2)/d
    torch.testing.assert_close(f1[-1], f0[-1] / 4.0)


def test_dense_bias_built_once_per_forward(monkeypatch):
    """All layers share one MaskSpec; eager/sdpa build its dense bias once, not once per layer."""
    calls = []
    original = MaskSpec.bias

    def spy(self, *args):
        calls.append(args[:4])
        return original(self, *args)

    monkeypatch.setattr(MaskSpec, "bias", spy)
    model = gu.CausalLM(gu.Config(vocab_size=50, d_model=32, n_layers=3, n_heads=4, pos="alibi")).eval()
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 9)))
    assert calls == [(0, 9, 0, 9)]


def test_kernels_agree_on_an_explicit_visibility_mask():
    """MaskSpec.allowed (Flamingo's interleaved images: each query sees some keys only), combined with key
    padding; every kernel masks the same keys, and a query that sees nothing stays finite."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=g) for _ in range(3))
    allowed = torch.rand(2, 1, 7, 7, generator=g) > 0.4
    allowed[0, 0, 3] = False  # a query with no visible key
    pad = torch.ones(2, 7, dtype=torch.bool)
    pad[1, :2] = False
    spec = MaskSpec(causal=False, allowed=allowed, key_padding=pad)
    want, _ = eager_attention(q, k, v, spec, scale=8**-0.5)
    torch.testing.assert_close(sdpa_attention(q, k, v, spec, scale=8**-0.5), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flash_attention(q, k, v, spec, scale=8**-0.5, block=3), want, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(want).all()
    keep = allowed[:, 0] & pad[:, None, :]  # [B, T, S]
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    ref = torch.softmax(scores.masked_fill(~keep[:, None], float("-inf")), -1).nan_to_num() @ v
    rows = keep.any(-1)[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(want[rows], ref[rows], atol=1e-5, rtol=1e-5)
