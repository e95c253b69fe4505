"""GPTQ (quant/gptq.py) and its checkpoint layout (nn/gptq_linear.py): the packing against the published
formula, the kernel path against dequantization, the algorithm's invariants, whole-model calibration, save and
load, and the errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup.nn import autotune
from groundup.nn.gptq_linear import GPTQLinear, pack_bits, unpack_bits
from groundup.quant.calibrate import calibration_ids
from groundup.quant.gptq import gptq, group_params, quantize_column, quantize_gptq


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), runs=st.integers(1, 3), cols=st.integers(1, 4), seed=st.integers(0, 999))
def test_packing_round_trips(bits, runs, cols, seed):
    n = runs * (32 if bits == 3 else 32 // bits)
    q = torch.randint(0, 2**bits, (n, cols), generator=torch.Generator().manual_seed(seed))
    words = pack_bits(q, bits)
    assert words.dtype == torch.int32 and words.shape == (n * bits // 32, cols)
    assert torch.equal(unpack_bits(words, bits), q)
    assert torch.equal(unpack_bits(pack_bits(q.t(), bits, dim=1), bits, dim=1), q.t())


def _published_dequant(qweight, qzeros, scales, g_idx, bits=4):
    """The dequantization AutoGPTQ publishes for its "gptq" (v1) checkpoints, written out with Python integers:
    q[i, o] = (qweight[i // 8, o] >> 4 (i % 8)) & 15, z[g, o] = ((qzeros[g, o // 8] >> 4 (o % 8)) & 15) + 1,
    w[o, i] = scales[g_idx[i], o] (q[i, o] - z[g_idx[i], o])."""
    per = 32 // bits
    in_f, out_f = qweight.shape[0] * per, qweight.shape[1]
    w = torch.zeros(out_f, in_f)
    for i in range(in_f):
        g = int(g_idx[i])
        for o in range(out_f):
            q = (int(qweight[i // per, o]) & 0xFFFFFFFF) >> (bits * (i % per)) & (2**bits - 1)
            z = ((int(qzeros[g, o // per]) & 0xFFFFFFFF) >> (bits * (o % per)) & (2**bits - 1)) + 1
            w[o, i] = float(scales[g, o]) * (q - z)
    return w


def _random_layer(out_f=32, in_f=64, group=32, seed=0, act_order=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.1
    x = torch.randn(256, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    codes, scales, zeros, g_idx = gptq(w, 2 * x.t() @ x / x.shape[0], group_size=group, act_order=act_order)
    return w, x, GPTQLinear.from_codes(codes, scales, zeros.clamp(min=1), g_idx, bits=4, group_size=group)


@pytest.mark.parametrize("act_order", [False, True])
def test_the_layout_dequantizes_by_the_published_formula(act_order):
    _, _, layer = _random_layer(out_f=16, in_f=32, group=16, act_order=act_order)
    assert layer.checkpoint_format == "gptq"
    want = _published_dequant(layer.qweight, layer.qzeros, layer.scales, layer.g_idx)
    assert torch.equal(layer.dequantize(torch.float32), want)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_the_int4_kernel_equals_the_dequantized_product(act_order, rows):
    _, _, layer = _random_layer(act_order=act_order, seed=rows)
    assert layer.has_kernel
    x = torch.randn(rows, 64).bfloat16()
    want = layer._product("dequant32", x).float()
    for name in ("int4mm", "dequant"):
        torch.testing.assert_close(layer._product(name, x).float(), want, rtol=2e-2,
                                   atol=2e-2 * float(want.abs().max()))
    with autotune.enabled(True):
        torch.testing.assert_close(layer(x.float()), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_with_an_identity_hessian_gptq_is_round_to_nearest():
    """No input correlation: H^-1 is diagonal, no error moves to other columns, GPTQ = RTN on its grid."""
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(3))
    codes, _, _, g_idx = gptq(w, torch.eye(64), group_size=32)
    for g in range(2):
        s, z = group_params(w[:, 32 * g: 32 * (g + 1)], 4, sym=False)
        for j in range(32 * g, 32 * (g + 1)):
            assert torch.equal(codes[:, j], quantize_column(w[:, j], s, z, 4)[0])
    assert torch.equal(g_idx, torch.arange(64) // 32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_output_error_of_round_to_nearest(seed, act_order):
    w, x, layer = _random_layer(seed=seed, act_order=act_order)
    rtn = torch.zeros_like(w)
    for g in range(2):
        s, z = group_params(w[:, 32 * g: 32 * (g + 1)], 4, sym=False)
        for j in range(32 * g, 32 * (g + 1)):
            rtn[:, j] = quantize_column(w[:, j], s, z, 4)[1]
    err = lambda q: float(((x @ (w - q).t()) ** 2).mean())
    assert err(layer.dequantize(torch.float32)) < 0.8 * err(rtn)


def test_dead_columns_and_a_singular_hessian():
    w = torch.randn(8, 32)
    H = torch.eye(32)
    H[5, 5] = 0  # no input ever reached column 5
    codes, scales, zeros, g_idx = gptq(w, H, group_size=32)
    deq = (codes - zeros[:, g_idx]).float() * scales[:, g_idx]
    assert torch.equal(deq[:, 5], torch.zeros(8))
    x = torch.randn(4, 32)
    with pytest.raises(ValueError, match="blocks.0.attn.q_proj: its Hessian is not positive definite"):
        gptq(w, x.t() @ x - torch.eye(32), damp=0.0, name="blocks.0.attn.q_proj")  # indefinite


def _tiny_text(tmp_path):
    words = "the cat sat on a mat while dogs ran over hills and birds sang songs".split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(3000))
    path = tmp_path / "calib.txt"
    path.write_text(text)
    return path


def test_a_gptq_model_decodes_close_to_float_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=300, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128)
    model = gu.CausalLM(cfg).eval()
    tok = gu.Tokenizer.train([_tiny_text(tmp_path).read_text()], 300, special_tokens=["<|endoftext|>"],
                             eos_token="<|endoftext|>")
    ids = calibration_ids([_tiny_text(tmp_path)], tok, samples=8, seqlen=32)
    with torch.no_grad():
        want = model(ids)
        quantize_gptq(model, ids, group_size=32, act_order=True, progress=False)
        got = model(ids)
    assert isinstance(model.blocks[1].mlp.down_proj, GPTQLinear) and model.quantization.desc_act
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="batchmean")
    assert kl / ids.shape[1] < 2e-2
    model.save_pretrained(tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 32 and qc["desc_act"]
    again = gu.from_pretrained(tmp_path / "q")
    assert isinstance(again.blocks[0].attn.q_proj, GPTQLinear)
    cast = gu.from_pretrained(tmp_path / "q", dtype=torch.bfloat16)  # the float parts only: scales stay fp16
    assert cast.blocks[0].attn.q_proj.scales.dtype == torch.float16 and cast.embed.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(again(ids), got)
    # and adapters train over it (QLoRA over a GPTQ base)
    gu.peft.apply_lora(again, r=2, target_modules=["q_proj", "v_proj"])
    again.train()
    again(ids[:, :-1], targets=ids[:, 1:]).backward()
    assert again.blocks[0].attn.q_proj.lora_B.weight.grad.abs().sum() > 0  # B starts at 0: its gradient first
    with pytest.raises(ValueError, match="calibrated"):
        gu.peft.merge_quantized(again, requantize=True)


def test_calibration_errors_come_first(tmp_path):
    tok = gu.Tokenizer.train([_tiny_text(tmp_path).read_text()], 300, special_tokens=["<|endoftext|>"])
    with pytest.raises(ValueError, match="calibration data too short.*128 samples need 65,536 tokens"):
        calibration_ids([_tiny_text(tmp_path)], tok, samples=128, seqlen=512)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        calibration_ids([tmp_path / "nope.txt"], tok)
    model = gu.CausalLM(gu.Config.preset("tiny-llama").replace(vocab_size=300, d_model=48, n_heads=4, n_kv_heads=2,
                                                               d_ff=100))
    with pytest.raises(ValueError, match=r"blocks.0.mlp.gate_proj \(100 x 48\).*multiples of 8"):
        quantize_gptq(model, torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="bits=5"):
        quantize_gptq(model, torch.zeros(1, 8, dtype=torch.long), bits=5)


def test_the_cli_quantizes_with_gptq_and_awq_and_refuses_bad_input_first(tmp_path, capsys):
    from groundup.cli import main

    text = _tiny_text(tmp_path)
    tok = gu.Tokenizer.train([text.read_text()], 300, special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=tok.vocab_size, d_model=64, n_heads=4, n_kv_heads=4,
                                                 d_ff=128)
    src = tmp_path / "base"
    gu.CausalLM(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    common = ["--calib", str(text), "--samples", "4", "--seqlen", "32", "--group", "32"]
    for method in ("gptq", "awq"):
        out = tmp_path / method
        assert main(["quantize", str(src), "--to", "int4", "--method", method, *common, "--out", str(out)]) == 0
        assert f"-> {method} int4 (groups of 32)" in capsys.readouterr().out
        assert isinstance(gu.from_pretrained(out).blocks[0].mlp.up_proj, GPTQLinear)
        assert main(["generate", str(out), "the cat", "--max-new-tokens", "4"]) == 0
        capsys.readouterr()
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": "the cat", "completion": " sat on a mat"}) + "\n" for _ in range(20)))
    assert main(["finetune", str(tmp_path / "gptq"), "--data", str(data), "--method", "qlora", "--steps", "2",
                 "--batch-size", "4", "--out", str(tmp_path / "ft"), "--quiet"]) == 0  # adapters over GPTQ layers
    assert (tmp_path / "ft" / "adapter" / "adapter_config.json").is_file()
    for bad, message in [(["--samples", "999"], "calibration data too short"),
                         (["--to", "nf4"], "use --to int4"), (["--calib"], "needs calibration text")]:
        args = ["quantize", str(src), "--to", "int4", "--method", "gptq", *common, "--out", str(tmp_path / "bad"), *bad]
        if bad == ["--calib"]:
            args = [a for a in args if a not in ("--calib", str(text))]
        assert main(args) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
