"""One generate for every architecture (gu.generate and model.generate), transformers' keyword names,
min_new_tokens, eos_token_id=None/[] meaning never stop early, and generation past the context."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_seq2seq_generate import _eos_friendly, _source, _trim

import groundup as gu
from groundup.generate.causal import ContextWarning


@pytest.mark.parametrize("name", ["t5", "marian"])
def test_gu_generate_runs_encoder_decoders_like_transformers(name, hf_encdec_folder, tmp_path):
    model, ref = _eos_friendly(name, hf_encdec_folder, tmp_path)
    src, mask = _source(3)
    eos = ref.config.eos_token_id
    for kwargs in (dict(num_beams=4), dict(num_beams=1), dict(num_beams=4, min_new_tokens=6),
                   dict(num_beams=1, min_new_tokens=7)):
        with torch.no_grad():
            want = ref.generate(src, attention_mask=mask, do_sample=False, use_cache=False, max_new_tokens=9,
                                **kwargs)
        got = gu.generate(model, src, 9, attention_mask=mask, **kwargs)
        assert _trim(got, eos) == _trim(want, eos), kwargs
        assert torch.equal(got, model.generate(src, 9, attention_mask=mask, **kwargs))
    rows = _trim(gu.generate(model, src, 9, attention_mask=mask, min_new_tokens=7), eos)
    assert all(len(r) >= 8 for r in rows)  # start token + at least 7 new ones before any EOS


@pytest.mark.parametrize("never", [None, []])
def test_eos_none_or_empty_never_stops(never, hf_encdec_folder, tmp_path):
    model, _ = _eos_friendly("marian", hf_encdec_folder, tmp_path)
    src, mask = _source(3)
    stopped = gu.generate(model, src, 9, attention_mask=mask)
    eos = model.config.eos_token_id
    assert any(len(r) < 10 for r in _trim(stopped, eos))  # the default stops at the config's EOS ...
    out = gu.generate(model, src, 9, attention_mask=mask, eos_token_id=never)
    assert out.shape == (3, 10)  # ... None / [] never stop early
    assert torch.equal(out[:, :2], stopped[:, :2])
    causal = gu.CausalLM(gu.Config.preset("tiny-llama")).eval()
    ids = torch.tensor([[1, 2, 3]])
    assert gu.generate(causal, ids, 6, eos_token_id=never).shape == (1, 9)


def test_seq2seq_sampling_is_seeded_and_top_k_1_is_greedy(hf_encdec_folder, tmp_path):
    model, _ = _eos_friendly("t5", hf_encdec_folder, tmp_path)
    src, mask = _source(4)
    a = gu.generate(model, src, 8, attention_mask=mask, temperature=1.0, seed=3)
    b = gu.generate(model, src, 8, attention_mask=mask, temperature=1.0, seed=3)
    assert torch.equal(a, b)
    greedy = gu.generate(model, src, 8, attention_mask=mask)
    assert torch.equal(gu.generate(model, src, 8, attention_mask=mask, temperature=0.7, top_k=1, seed=0), greedy)


def test_min_new_tokens_on_a_decoder_matches_transformers(hf_folder):
    path, ref = hf_folder("llama")
    model = gu.from_pretrained(path)
    ids = torch.tensor([[5, 9, 14, 3]])
    with torch.no_grad():
        free = ref.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    stop = int(free[0, 6])  # make the 3rd new token a stop id, then forbid stopping before 5 tokens
    with torch.no_grad():
        want = ref.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=0,
                            min_new_tokens=5)
    got = gu.generate(model, ids, 12, eos_token_id=stop, pad_token_id=0, min_new_tokens=5)
    n = want.shape[1]
    assert torch.equal(got[:, :n], want) and (got[:, n:] == 0).all()
    assert gu.generate(model, ids, 12, eos_token_id=stop, pad_token_id=0).shape[1] < got.shape[1]


def test_what_cannot_generate_says_so():
    bert = gu.Encoder(gu.Config.preset("tiny-bert"))
    with pytest.raises(ValueError, match="fill_mask"):
        gu.generate(bert, torch.tensor([[1, 2]]), 3)
    causal = gu.CausalLM(gu.Config.preset("tiny-llama"))
    with pytest.raises(ValueError, match="beam search is offered for encoder-decoder"):
        gu.generate(causal, torch.tensor([[1, 2]]), 3, num_beams=2)
    with pytest.raises(ValueError, match=r"min_new_tokens=9 must be in \[0, max_new_tokens=3\]"):
        gu.generate(causal, torch.tensor([[1, 2]]), 3, min_new_tokens=9)


def test_rope_past_its_context_warns_once_per_call():
    model = gu.CausalLM(gu.Config.preset("tiny-llama", max_seq_len=16)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gu.generate(model, torch.tensor([[1, 2, 3]]), 20)
    assert [w.category for w in caught] == [ContextWarning]
    assert "trained context of 16" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gu.generate(model, torch.tensor([[1, 2, 3]]), 10)  # within the context: silent
        gu.generate(model, torch.tensor([[1, 2, 3]]), 20, rope_scaling=("linear", 2.0))  # extended: silent


def test_learned_positions_refuse_what_cannot_fit_before_any_work():
    model = gu.CausalLM(gu.Config.preset("tiny-gpt2")).eval()
    for truncate in (False, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            gu.generate(model, torch.tensor([[1, 2, 3]]), 10**8, truncate=truncate)


def test_the_cache_is_bounded_and_grows_exactly():
    cfg = gu.Config.preset("tiny-llama", max_seq_len=16)
    model = gu.CausalLM(cfg).eval()
    cache = model.new_cache(10**8)
    ids = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
        assert cache.nbytes == gu.calc.kv_cache_bytes(cfg, batch=2, seq_len=16, dtype=torch.float32)
        steps = [model(ids[:, i:i + 1], cache=cache) for i in range(4, 40)]  # grows 16 -> 32 -> 64
        full = model(ids)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 4:], atol=1e-5, rtol=1e-5)
    assert cache.nbytes == gu.calc.kv_cache_bytes(cfg, batch=2, seq_len=64, dtype=torch.float32)


def test_one_generation_config_for_every_path():
    """The keywords are GenerationConfig's fields: a record and the same keywords give the same tokens, a keyword
    overrides the record, an unknown one is refused with the list, and each architecture refuses what its decoder
    does not offer, naming the field."""
    from groundup.generate.config import GenerationConfig

    model = gu.CausalLM(gu.Config.preset("tiny-llama")).eval()
    ids = torch.tensor([[1, 2, 3]])
    record = GenerationConfig(max_new_tokens=6, temperature=0.9, top_k=20, seed=3)
    by_record = gu.generate(model, ids, generation_config=record)
    assert torch.equal(by_record, gu.generate(model, ids, 6, temperature=0.9, top_k=20, seed=3))
    assert gu.generate(model, ids, generation_config=record, max_new_tokens=2).shape == (1, 5)
    with pytest.raises(TypeError, match="unknown generation setting.*temprature.*temperature"):
        gu.generate(model, ids, 4, temprature=0.5)
    t5 = gu.Seq2Seq(gu.Config.preset("tiny-t5")).eval()
    with pytest.raises(ValueError, match="truncate is for decoder-only models"):
        gu.generate(t5, ids, 3, truncate=True)
    with pytest.raises(ValueError, match="suppress_tokens is for encoder-decoder models"):
        gu.generate(model, ids, 3, suppress_tokens=[5])
