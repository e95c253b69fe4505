"""generate(compile=...): the one-token steps through torch.compile on a fixed-shape cache give the eager
loop's tokens (greedy, sampled, left-padded, quantized, streamed), and what the fixed step cannot run is
refused before any work. Most tests trace with dynamo's "eager" backend (the graph capture and the fixed
cache are what is under test, in seconds); one compiles with inductor, as compile=True does."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.generate import compiled
from groundup.generate.compiled import compile_seconds
from groundup.quant import quantize

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]  # the second row is left-padded


def _model(**kw) -> gu.CausalLM:
    torch.manual_seed(0)
    base = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128)
    cfg = gu.Config.preset("tiny-llama").replace(**{**base, **kw})
    model = gu.CausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # wider logit margins than the initial ones, so rounding cannot flip a greedy choice
    return model


@pytest.mark.parametrize("kw", [{}, dict(pos="alibi", family="gpt2", norm="layernorm", ffn="gelu", attn_bias=True),
                                dict(tie_embeddings=False, qk_norm="head")])
def test_compiled_steps_give_the_eager_tokens(kw):
    model = _model(**kw)
    want = gu.generate(model, PROMPTS, 12)
    assert torch.equal(gu.generate(model, PROMPTS, 12, compile="eager"), want)
    sampled = dict(temperature=0.8, top_k=20, seed=3)
    assert torch.equal(gu.generate(model, PROMPTS, 12, compile="eager", **sampled),
                       gu.generate(model, PROMPTS, 12, **sampled))


def test_compiled_steps_of_a_quantized_model_and_a_stream():
    model = _model().to(torch.bfloat16)
    quantize(model, "int4", group_size=32, include_head=True)  # a 97-wide head: not one for the int4 kernel
    want = gu.generate(model, [PROMPTS[0]], 10)
    assert torch.equal(gu.generate(model, [PROMPTS[0]], 10, compile="eager"), want)
    steps = list(gu.generate.stream(model, [PROMPTS[0]], 10, compile="eager"))
    assert torch.stack(steps, 1).tolist() == want[:, len(PROMPTS[0]):].tolist()


def test_later_steps_run_the_entry_the_first_step_chose(monkeypatch):
    model = _model()
    found = []
    real = compiled._entry_code
    monkeypatch.setattr(compiled, "_entry_code", lambda args: found.append(real(args)) or found[-1])
    want = gu.generate(model, PROMPTS, 8)
    assert torch.equal(gu.generate(model, PROMPTS, 8, compile="eager"), want)
    assert len(found) == 1 and callable(found[0])  # one lookup a generation, then the entry's code directly


def test_inductor_compiles_once_per_shape_and_reports_its_time():
    model = _model()
    want = gu.generate(model, PROMPTS, 8)
    assert torch.equal(gu.generate(model, PROMPTS, 8, compile=True), want)
    first = compile_seconds(model)
    assert first > 0
    # another prompt length and token count in the same 64-slot bucket and batch: the graph is reused
    other = [[1, 2, 3], [9, 8, 7, 6]]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch.equal(gu.generate(model, other, 20, compile=True), gu.generate(model, other, 20))
    assert compile_seconds(model) == first
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # nothing traced again


def test_what_the_fixed_step_cannot_run_is_refused_first():
    model = _model()
    with pytest.raises(ValueError, match="within the model's context"):
        gu.generate(model, PROMPTS, 125, compile="eager")
    with pytest.raises(ValueError, match="draft model"):
        gu.generate(model, PROMPTS, 4, compile="eager", draft_model=_model())
    with pytest.raises(ValueError, match="sliding window"):
        gu.generate(_model(sliding_window=16), PROMPTS, 30, compile="eager")
    with pytest.raises(ValueError, match="compile='nope'"):
        gu.generate(model, PROMPTS, 4, compile="nope")
    assert compile_seconds(model) == 0


def test_the_cli_compiles_on_request_and_prints_the_same_text(tmp_path, capsys):
    from groundup.cli import main

    tok = gu.Tokenizer.train(["the cat sat on the mat. the dog ran after the cat. " * 30], 300,
                             special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    model = _model(vocab_size=tok.vocab_size)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert main(["generate", str(tmp_path), "the dog", "--max-new-tokens", "8"]) == 0
    eager = capsys.readouterr()
    assert main(["generate", str(tmp_path), "the dog", "--max-new-tokens", "8", "--compile"]) == 0
    compiled = capsys.readouterr()
    assert compiled.out == eager.out and compiled.out.startswith("the dog")
    assert "compiled the decode step in" in compiled.err


def test_a_compiled_model_is_freed_when_dropped():
    import gc
    import weakref

    model = _model()
    gu.generate(model, PROMPTS, 4, compile="eager")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
