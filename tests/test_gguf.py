"""GGUF files: a groundup model written with save_gguf reads back with equal logits (f16/bf16 to their
rounding, q8_0/q4_0 within their error), tensors as the gguf package reads them, llama.cpp's q/k row order
and gemma's stored norms, and clear errors for damaged or unsupported files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import groundup as gu
from groundup.checkpoint.io import CheckpointError
from groundup.kernels.ggml_quants import dequantize

gguf = pytest.importorskip("gguf")
IDS = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))


def _model(family: str = "llama", **kw) -> gu.CausalLM:
    torch.manual_seed(0)
    base = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64)
    extra = {"llama": dict(tie_embeddings=False), "qwen2": dict(attn_bias=True), "phi3": dict(tie_embeddings=False),
             "gemma": dict(ffn="geglu_tanh", norm_weight_offset=1.0, embed_scale="sqrt_d",
                           embed_scale_rounded=True, head_dim=32, tie_embeddings=True)}[family]
    cfg = gu.Config.preset("tiny-llama").replace(**{"family": family, **base, **extra, **kw})
    model = gu.CausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # norms and biases off their initial values too
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "phi3"])
@pytest.mark.parametrize("dtype,tol", [("f32", 1e-5), ("f16", 2e-2), ("q8_0", 5e-2)])
def test_save_gguf_reads_back_with_equal_logits(family, dtype, tol, tmp_path):
    model = _model(family)
    path = model.save_gguf(tmp_path / "m.gguf", dtype=dtype)
    again = gu.from_pretrained(path)
    assert again.config.family == family and again.config.tie_embeddings == model.config.tie_embeddings
    with torch.no_grad():
        want, got = model(IDS), again(IDS)
    assert (got - want).abs().max() <= tol * want.abs().max(), (got - want).abs().max()
    if dtype == "f32":  # lossless: every tensor back (q/k permuted and restored), gemma's norms through 1 + w
        for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
            if family == "gemma" and k.endswith("norm.weight"):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
            else:
                assert torch.equal(a, b), k


def test_tensors_are_what_llama_cpp_expects(tmp_path):
    """The file as the gguf package reads it: ggml names and shapes (ne innermost first), q rows permuted to
    interleaved pairs, norms in F32, matrices in Q4_0 that the package dequantizes to our values."""
    model = _model("llama")
    path = model.save_gguf(tmp_path / "m.gguf", dtype="q4_0")
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q4_0 and list(q.shape) == [64, 64]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    theirs = gguf.quants.dequantize(q.data, q.tensor_type).reshape(64, 64)
    ours = dequantize(torch.from_numpy(np.array(q.data, copy=True).reshape(-1).view(np.uint8)), 2, 64 * 64)
    assert np.array_equal(theirs, ours.reshape(64, 64).numpy())
    w = model.blocks[0].attn.q_proj.weight.detach()
    D = 16  # head_dim: GGUF row 2j of a head is HF row j, row 2j + 1 is HF row j + D/2
    assert np.allclose(theirs[1], w[D // 2].numpy(), atol=0.1 * float(w.abs().max()))
    assert "output.weight" in tensors  # untied head written


def test_q4_0_logits_stay_close(tmp_path):
    model = _model("llama")
    again = gu.from_pretrained(model.save_gguf(tmp_path / "m.gguf", dtype="q4_0"))
    with torch.no_grad():
        want, got = model(IDS).log_softmax(-1), again(IDS).log_softmax(-1)
    kl = torch.nn.functional.kl_div(got, want, log_target=True, reduction="batchmean") / IDS.shape[1]
    assert kl < 0.05, kl


def test_damaged_and_unsupported_files_are_refused_by_name(tmp_path):
    model = _model("llama")
    path = model.save_gguf(tmp_path / "m.gguf", dtype="f16")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.gguf: not a readable GGUF file"):
        gu.from_pretrained(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF file"):
        gu.from_pretrained(junk)
    w = gguf.GGUFWriter(str(tmp_path / "rwkv.gguf"), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"general.architecture='rwkv6' is not supported"):
        gu.from_pretrained(tmp_path / "rwkv.gguf")
    with pytest.raises(ValueError, match="dtype='q3_k'"):
        model.save_gguf(tmp_path / "x.gguf", dtype="q3_k")
    with pytest.raises(CheckpointError, match="gemma architecture has no output tensor"):  # llama.cpp refuses it
        _model("gemma", tie_embeddings=False).save_gguf(tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])  # transformers reads no gemma (1) GGUF
def test_transformers_reads_our_gguf_with_equal_logits_and_tokens(family, tmp_path):
    """transformers' own GGUF loader (which follows llama.cpp's conventions) on a file groundup wrote: the
    same logits and the same token ids; and our reader gives the tokenizer back."""
    import transformers as T

    from groundup.checkpoint.gguf import load_tokenizer

    tok = gu.Tokenizer.train(["the cat sat on the mat. the dog ran after the cat 123. " * 30], 300,
                             special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    # transformers' Phi3Config defaults pad_token_id to 32000, past this vocabulary: the file names one
    model = _model(family, vocab_size=tok.vocab_size, **({"pad_token_id": 0} if family == "phi3" else {}))
    model.save_gguf(tmp_path / "m.gguf", dtype="f32", tokenizer=tok)
    text = "the cat 12345 ran after the dog, on a mat"
    ids = torch.tensor([tok.encode(text)])
    assert load_tokenizer(tmp_path / "m.gguf").encode(text) == ids[0].tolist()
    ref = T.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids), atol=1e-4, rtol=0)
    assert T.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")(text)["input_ids"] == ids[0].tolist()


def test_without_the_gguf_package_models_load_and_writing_names_the_extra(tmp_path, monkeypatch):
    import sys

    tok = gu.Tokenizer.train(["the cat sat on the mat. " * 20], 300, special_tokens=["<|endoftext|>"],
                             eos_token="<|endoftext|>")
    path = _model("llama", vocab_size=tok.vocab_size).save_gguf(tmp_path / "m.gguf", dtype="f16", tokenizer=tok)
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    model = gu.from_pretrained(path)  # the header, tensors and vocabulary are read by groundup's own reader
    again = gu.Tokenizer.from_file(path)
    assert again.encode("the cat sat") == tok.encode("the cat sat")
    with pytest.raises(CheckpointError, match=r"pip install 'groundup\[gguf\]'"):
        model.save_gguf(tmp_path / "again.gguf")


def test_a_gguf_file_runs_from_the_command_line(tmp_path, capsys):
    """`groundup generate FILE.gguf`: the model and its tokenizer (Tokenizer.from_file reads tokenizer.ggml.*)
    come from the one file, and the streamed text is the greedy continuation generate() gives."""
    from groundup.cli import main

    tok = gu.Tokenizer.train(["the cat sat on the mat. the dog ran after the cat. " * 30], 300,
                             special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    model = _model("llama", vocab_size=tok.vocab_size)
    path = model.save_gguf(tmp_path / "m.gguf", dtype="f32", tokenizer=tok)
    assert gu.Tokenizer.from_file(path).encode("the dog sat") == tok.encode("the dog sat")
    assert main(["generate", str(path), "the dog", "--max-new-tokens", "6"]) == 0
    ids = tok.encode("the dog")
    want = gu.generate(model, [ids], 6, eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    want = [t for t in want if t != tok.eos_token_id]
    assert capsys.readouterr().out == "the dog" + tok.decode(want) + "\n"
