"""A GGUF file's matrices stay in their block formats: GGUF layers (nn/gguf_linear.py) hold the file's bytes,
a tied head reads the embedding's blocks, save_gguf writes them back byte for byte, the products agree with
the dequantized model (exactly on torch's path, within the activations' 8-bit rounding on the kernels), and a
compiled decode step runs the native operator without a graph break."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import groundup as gu
from groundup import kernels
from groundup.nn.gguf_linear import GGUFEmbedding, GGUFLinear, project
from groundup.nn.qspec import GGUFSpec

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from test_gguf import IDS, _model  # noqa: E402


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("family,dtype", [("llama", "q4_0"), ("phi3", "q8_0"), ("gemma", "q8_0"), ("qwen2", "f16")])
def test_blocks_are_kept_and_written_back_unchanged(family, dtype, tmp_path):
    src = _model(family).save_gguf(tmp_path / "a.gguf", dtype=dtype)
    model = gu.from_pretrained(src)
    layers = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    assert len(layers) >= 7 * 2 and all(m.ggml_type == dtype.upper() for m in layers)
    assert isinstance(model.embed, GGUFEmbedding) and isinstance(model.quantization, GGUFSpec)
    assert not any(p.dtype == torch.uint8 for p in model.parameters())  # blocks are buffers, not trained
    if model.config.tie_embeddings:  # the head reads the embedding's bytes: one copy
        assert model.lm_head.blocks.data_ptr() == model.embed.blocks.data_ptr()
    again = model.save_gguf(tmp_path / "b.gguf", dtype="f32")  # dtype applies to float matrices only
    assert _tensors(again) == _tensors(src)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_kept_model_agrees_with_the_dequantized_one(family, tmp_path):
    src = _model(family).save_gguf(tmp_path / "a.gguf", dtype="q8_0")
    kept, floats = gu.from_pretrained(src), gu.from_pretrained(src, dequantize=True)
    assert not any(isinstance(m, GGUFLinear) for m in floats.modules())
    with torch.no_grad():
        a, b = kept(IDS), floats(IDS)
    # the kernels round activations to 8 bits (about 0.4% a value); torch's path is exact
    tol = 3e-2 if kernels.available() else 1e-5
    assert (a - b).abs().max() <= tol * b.abs().max(), (a - b).abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


def test_tied_head_and_greedy_tokens(tmp_path):
    src = _model("gemma").save_gguf(tmp_path / "a.gguf", dtype="q4_0")
    model = gu.from_pretrained(src)
    out = gu.generate(model, IDS[:1], 6)
    assert out.shape == (1, IDS.shape[1] + 6)
    assert "ggml_type=Q4_0" in repr(model.lm_head)


@pytest.mark.skipif(not kernels.available(), reason="native kernels not built")
def test_compiled_decode_step_has_no_graph_break(tmp_path):
    model = gu.from_pretrained(_model("llama").save_gguf(tmp_path / "a.gguf", dtype="q4_0"))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda ids: model(ids))(IDS[:1, :4])
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.skipif(not kernels.available(), reason="native kernels not built")
@pytest.mark.parametrize("family", ["qwen2", "gemma"])  # biases on q/k/v; Gemma's tied head and GELU MLP
def test_compiled_steps_of_kept_blocks_give_the_eager_tokens(family, tmp_path):
    """The fixed-shape step with the fused q/k/v and gate/up products in its graph, run through the cache
    entry its first step chose, gives the eager loop's greedy tokens."""
    model = gu.from_pretrained(_model(family).save_gguf(tmp_path / "a.gguf", dtype="q8_0"))
    for ids in (IDS[:1], IDS):  # one row: the several-weight-rows decode kernels; two: the batch ones
        want = gu.generate(model, ids, 12)
        assert torch.equal(gu.generate(model, ids, 12, compile="eager"), want)


def test_torch_path_when_the_kernels_are_off(tmp_path):
    """GROUNDUP_KERNELS=off: the ATen path, equal to the dequantized model to float rounding."""
    src = _model("llama").save_gguf(tmp_path / "a.gguf", dtype="q4_0")
    code = f"""
import torch, groundup as gu
from groundup import kernels
from groundup.nn.gguf_linear import GGUFLinear
assert not kernels.available() and kernels.variant() == "off"
kept, floats = gu.from_pretrained({str(src)!r}), gu.from_pretrained({str(src)!r}, dequantize=True)
assert "torch float32" in repr(kept.blocks[0].attn.q_proj)
ids = torch.tensor([[1, 5, 9, 33, 2]])
with torch.no_grad():
    torch.testing.assert_close(kept(ids), floats(ids), rtol=1e-5, atol=1e-5)
print("ok")
"""
    env = {**os.environ, "GROUNDUP_KERNELS": "off"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.skipif(not kernels.available(), reason="native kernels not built: no variant to name")
def test_forcing_a_variant_the_cpu_lacks_names_the_choices(tmp_path):
    env = {**os.environ, "GROUNDUP_KERNELS": "avx9000"}
    code = "from groundup import kernels; kernels.available()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0 and "GROUNDUP_KERNELS='avx9000'" in out.stderr and "generic" in out.stderr


@pytest.mark.skipif(not kernels.available(), reason="native kernels not built")
def test_qkv_and_gate_up_are_one_product_with_the_layers_results(tmp_path, monkeypatch):
    model = gu.from_pretrained(_model("llama").save_gguf(tmp_path / "a.gguf", dtype="q4_0"))
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    x = torch.randn(2, 3, attn.q_proj.in_features)
    layers = (attn.q_proj, attn.k_proj, attn.v_proj)
    with torch.no_grad():
        one_by_one = [m(x) for m in layers]
        calls = []
        real = kernels.ggml_mm_many
        monkeypatch.setattr(kernels, "ggml_mm_many", lambda *a: calls.append(len(a[1])) or real(*a))
        fused = project(x, layers)
        for a, b in zip(fused, one_by_one, strict=True):
            assert torch.equal(a, b)
        model(IDS[:1])
        assert calls == [3] + [3, 2] * len(model.blocks)  # q/k/v, then each block's q/k/v and gate/up
        # a hook on a layer (calibration, tracing) or an adapter wrapped round one: layer by layer again
        seen = []
        handle = mlp.up_proj.register_forward_hook(lambda *a: seen.append(1))
        calls.clear()
        project(x, (mlp.gate_proj, mlp.up_proj))
        handle.remove()
        assert seen == [1] and calls == []
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: seen.append(2))
        project(x, (mlp.gate_proj, mlp.up_proj))
        handle.remove()
        assert seen == [1, 2, 2] and calls == []


def test_adapters_train_over_kept_layers(tmp_path):
    """Gradients reach the input through a frozen GGUF layer (QLoRA over a GGUF file)."""
    model = gu.from_pretrained(_model("llama").save_gguf(tmp_path / "a.gguf", dtype="q8_0"))
    layer = model.blocks[0].attn.q_proj
    x = torch.randn(3, layer.in_features, requires_grad=True)
    layer(x).square().sum().backward()
    w = layer.dequantize()
    with torch.no_grad():
        want = 2 * (x @ w.T) @ w
    torch.testing.assert_close(x.grad, want, rtol=1e-4, atol=1e-4)


def test_gemma_rounded_embedding_scale_traces_without_a_break():
    """Gemma's sqrt(d_model) rounded to the embeddings' dtype is a constant of the graph, equal to torch's
    rounding for each dtype."""
    import math

    from groundup.models.common import rounded_to

    for value in (math.sqrt(640), math.sqrt(2304), 1 / 3, 12345.678):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert rounded_to(value, dtype) == torch.tensor(value, dtype=dtype).item()
    model = _model("gemma")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda ids: model(ids))(IDS[:1, :4])
    assert explained.graph_break_count == 0, explained.break_reasons


def test_gguf_spec_makes_the_layers_its_encoder_writes():
    lin = torch.nn.Linear(64, 8)
    for kind in ("Q8_0", "Q4_0", "Q4_1"):
        layer = GGUFSpec(("proj",), types=(kind,)).make(lin)
        assert layer.ggml_type == kind
        w = lin.weight.detach()
        assert (layer.dequantize() - w).abs().max() <= 0.2 * w.abs().max()  # 4- or 8-bit rounding
    with pytest.raises(ValueError, match="writing ggml type Q4_K"):  # the encoder names what it writes
        GGUFSpec(("proj",), types=("Q4_K",)).make(torch.nn.Linear(256, 8))
