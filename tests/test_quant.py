"""Weight-only int8 / int4 quantization: round-trip error bounds, every kernel path against dequantize +
F.linear, whole models (logits, greedy tokens, save and load), and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup.nn import autotune
from groundup.nn.qlinear import Int4Linear, Int8Linear, pack_int4, quantize_int4, quantize_int8, unpack_int4
from groundup.quant import quantize


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 3), g=st.sampled_from([32, 64]), spread=st.floats(1e-3, 1e3),
       seed=st.integers(0, 10**6))
def test_round_trip_errors_are_bounded(rows, groups, g, spread, seed):
    """int8: each weight within 3/4 of its row's step; int4: within half a step plus the bf16 rounding of the
    group minimum (both scales are bf16, the codes computed against them)."""
    w = torch.randn(rows, groups * g, generator=torch.Generator().manual_seed(seed)) * spread
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err8 = (w - q.float() * s.float()[:, None]).abs()
    assert bool((err8 <= 0.75 * s.float()[:, None] + 1e-12).all())
    codes, scale, low = quantize_int4(w, g)
    assert int(codes.max()) <= 15
    deq = (codes.float().view(rows, groups, g) * scale.float()[..., None] + low.float()[..., None]).view(rows, -1)
    step = scale.float().repeat_interleave(g, dim=1)
    bound = 0.5 * step + 2**-8 * w.abs().amax(dim=1, keepdim=True) + 1e-12
    assert bool(((w - deq).abs() <= bound).all())
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)


@pytest.mark.parametrize("tuned", [False, True])
@pytest.mark.parametrize("cls,names", [(Int8Linear, ["int8mm", "dequant", "dequant32"]),
                                       (Int4Linear, ["int4mm", "dequant", "dequant32"])])
@pytest.mark.parametrize("rows", [1, 3, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_every_kernel_path_equals_dequantize_then_linear(cls, names, rows, bias, tuned):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(128, 96, bias=bias)
    q = cls.from_linear(lin) if cls is Int8Linear else cls.from_linear(lin, group_size=32)
    x = torch.randn(rows, 128)
    want = F.linear(x.bfloat16().float(), q.dequantize(torch.float32),
                    lin.bias.detach() if bias else None)  # the exact product of what the codes stand for
    for name in names:
        got = q._product(name, x.bfloat16()).float() + (lin.bias.detach() if bias else 0)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()), msg=name)
    with autotune.enabled(tuned):  # the first path, or whichever the tuner picks
        assert q(x).dtype == torch.float32  # the layer casts around the bf16 kernels
        torch.testing.assert_close(q(x), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    # and the quantized weight stays close to the float one
    rel = (q.dequantize(torch.float32) - lin.weight).abs().max() / lin.weight.abs().max()
    assert rel < (0.01 if cls is Int8Linear else 0.1)


def _model(**kw) -> gu.CausalLM:
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                                 d_ff=128, **kw)
    return gu.CausalLM(cfg).eval()


@pytest.mark.parametrize("method,group", [("int8", 64), ("int4", 32), ("int4", 64)])
def test_quantized_model_is_close_and_reloads_identically(method, group, tmp_path):
    model = _model()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
        quantize(model, method, group_size=group)
        got = model(ids)
    assert isinstance(model.blocks[0].attn.q_proj, Int8Linear if method == "int8" else Int4Linear)
    assert type(model.lm_head).__name__ == "Linear"  # tied head: left alone
    kl = F.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="batchmean") / 10
    assert kl < (1e-3 if method == "int8" else 2e-2), kl
    model.save_pretrained(tmp_path / "q")
    again = gu.from_pretrained(tmp_path / "q")
    assert again.quantization == model.quantization
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    with torch.no_grad():
        torch.testing.assert_close(again(ids), got, rtol=0, atol=1e-6)


def test_int8_greedy_tokens_equal_the_float_models():
    """A trained-looking margin: a model made to repeat a pattern keeps its greedy choice under int8."""
    model = _model()
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    float_tokens = gu.generate(model, prompt, 12)
    quantize(model, "int8")
    assert torch.equal(gu.generate(model, prompt, 12), float_tokens)


@pytest.mark.parametrize("family,method", [("gpt2", "int4"), ("phi3", "int8"), ("gpt_neox", "int8")])
def test_fused_layouts_save_and_load_quantized(family, method, hf_folder, tmp_path):
    """GPT-2's Conv1D + fused c_attn and Phi-3's qkv_proj / gate_up_proj: the codes and scales are split and
    joined by rows as the float weights are."""
    path, _ = hf_folder(family)
    model = gu.from_pretrained(path)
    quantize(model, method, group_size=32)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids)
    model.save_pretrained(tmp_path / "q")
    with torch.no_grad():
        torch.testing.assert_close(gu.from_pretrained(tmp_path / "q")(ids), want, rtol=0, atol=1e-6)


def test_bad_input_is_refused_before_any_layer_changes():
    model = _model()
    with pytest.raises(ValueError, match="method='int3'"):
        quantize(model, "int3")
    with pytest.raises(ValueError, match="group_size=48"):
        quantize(model, "int4", group_size=48)
    odd = gu.CausalLM(gu.Config.preset("tiny-llama").replace(d_model=64, n_heads=4, d_ff=96))
    msg = r"blocks\.0\.mlp\.down_proj: group_size=64 does not divide its input width 96"
    with pytest.raises(ValueError, match=msg):
        quantize(odd, "int4", group_size=64)
    assert odd.quantization is None and type(odd.blocks[0].mlp.up_proj).__name__ == "Linear"
    quantize(model, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, "int4")


def test_indivisible_layers_can_stay_int8_and_reload(tmp_path):
    odd = gu.CausalLM(gu.Config.preset("tiny-llama").replace(d_model=64, n_heads=4, d_ff=96)).eval()
    quantize(odd, "int4", group_size=64, indivisible="int8")
    assert isinstance(odd.blocks[0].mlp.down_proj, Int8Linear) and isinstance(odd.blocks[0].mlp.up_proj, Int4Linear)
    assert list(odd.quantization.int8_modules) == ["blocks.0.mlp.down_proj", "blocks.1.mlp.down_proj"]
    odd.save_pretrained(tmp_path / "q")
    again = gu.from_pretrained(tmp_path / "q")
    assert isinstance(again.blocks[1].mlp.down_proj, Int8Linear) and again.quantization == odd.quantization


def test_autotune_decisions_are_cached_and_do_not_change_results(monkeypatch):
    from groundup.nn.linear import Linear

    lin = Linear(64, 48)
    x = torch.randn(3, 64)
    autotune.reset()
    with torch.no_grad(), autotune.enabled(True):
        first = lin(x)
        key = next(k for k in autotune.decisions() if k[0] == "linear")
        calls = []
        monkeypatch.setattr(autotune, "_agrees", lambda a, b: calls.append(1) or True)
        again = lin(x)
    assert not calls  # decided once: no second measurement
    torch.testing.assert_close(first, again, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert autotune.decisions()[key] in ("plain", "weight_major", "split")
    with autotune.enabled(False):
        autotune.reset()
        lin(x)
        assert autotune.decisions() == {}  # off: the plain path, nothing measured


def test_an_untied_quantized_head_decodes():
    """The lm_head sees a sliced (non-contiguous) last position during generation; the kernels want rows."""
    model = _model(tie_embeddings=False)
    ids = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(ids)[:, -1]
    quantize(model, "int4", group_size=32, include_head=True)
    assert isinstance(model.lm_head, Int4Linear)
    with torch.no_grad():
        got = model(ids, logits_to_keep=1)[:, -1]
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.1 * float(want.abs().max()))
    assert gu.generate(model, ids, 5).shape == (3, 12)


def test_a_tied_head_is_untied_into_a_quantized_copy(tmp_path):
    """include_head on a tied model: the embedding stays float (the lookup is unchanged), the head becomes
    int8 codes of the same matrix; the folder says untied and reloads to the same logits."""
    model = _model(tie_embeddings=True)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(5))
    embed = model.embed.weight.detach().clone()
    with torch.no_grad():
        want = model(ids)
    quantize(model, "int8", include_head=True)
    assert isinstance(model.lm_head, Int8Linear) and not model.config.tie_embeddings
    assert torch.equal(model.embed.weight, embed)
    torch.testing.assert_close(model.lm_head.dequantize(torch.float32), embed, rtol=0,
                               atol=float(embed.abs().max()) / 127)
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=0.05 * float(want.abs().max()))
    model.save_pretrained(tmp_path / "q")
    again = gu.from_pretrained(tmp_path / "q")
    assert not again.config.tie_embeddings and isinstance(again.lm_head, Int8Linear)
    with torch.no_grad():
        assert torch.equal(again(ids), got)


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
def test_dequantized_products_in_row_blocks_equal_one_block(cls, monkeypatch):
    """The dequantizing paths build the float weight a block of rows at a time (bounded memory): blocks of
    10 rows (with a ragged last one) give the one-block result."""
    import groundup.nn.qproduct as qp

    torch.manual_seed(1)
    lin = torch.nn.Linear(128, 96)
    q = cls.from_linear(lin) if cls is Int8Linear else cls.from_linear(lin, group_size=32)
    x = torch.randn(5, 128).bfloat16()
    whole = {n: q._product(n, x) for n in ("dequant", "dequant32")}
    monkeypatch.setattr(qp, "CHUNK_BYTES", 4 * 128 * 10)
    for name, want in whole.items():
        assert torch.equal(q._product(name, x), want), name


@pytest.mark.parametrize("out", [192, 320, 48])
def test_the_int4_kernel_layout_built_in_row_blocks_equals_one_block(out, monkeypatch):
    """The CPU kernel's layout is converted 64 output rows at a time (bounded int32 codes); widths 64 does not
    divide (48) go in one block. Same bytes, same products as one conversion of the whole matrix."""
    import groundup.nn.qproduct as qp

    torch.manual_seed(2)
    q = Int4Linear.from_linear(torch.nn.Linear(256, out), group_size=32)
    whole = q._kernel_weights()[0].clone()
    q._kernel = None
    monkeypatch.setattr(qp, "CHUNK_BYTES", 4 * 256 * 64)  # one 64-row block at a time
    assert torch.equal(q._kernel_weights()[0], whole)


def test_the_int8_kernel_takes_codes_at_any_byte_offset():
    """Codes loaded from a file are views into its memory map at arbitrary offsets; the AVX-512 build of
    torch's int8 kernel crashed on such a weight (seen on an AVX-512 EPYC). The layer hands it aligned copies."""
    torch.manual_seed(0)
    q = Int8Linear.from_linear(torch.nn.Linear(64, 40))
    want = q._kernel_product(torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).bfloat16())
    base = torch.zeros(40 * 64 + 40, dtype=torch.int8)
    base[40:] = q.weight.reshape(-1)
    q.weight = base[40:].view(40, 64)  # a 40-byte offset from an aligned allocation
    assert q.weight.data_ptr() % 64
    got = q._kernel_product(torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).bfloat16())
    assert torch.equal(got, want) and q.weight.data_ptr() % 64 == 0
