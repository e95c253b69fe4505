"""KV-cached generation: identical greedy tokens to transformers, to the uncached reference, per row of an
uneven batch; sampling filters against transformers' warpers; cache size; streaming; errors."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, randomize_
from hypothesis import example, given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup import calc
from groundup.generate import generate_uncached, stream
from groundup.generate.sampling import apply_repetition_penalty, top_k_filter, top_p_filter

NEW = 10


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of lengths 7, 3 and 5 (pad id 0)."""
    g = torch.Generator().manual_seed(4)
    lengths = [7, 3, 5]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, 7 - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[b, 7 - n:] = 1
    return ids, mask


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "mixtral", "qwen2_moe", "gpt_neox", "mpt", "falcon-gqa",
                                  "llama3-rope", "qwen2", "qwen3", "gemma", "phi3",
                                  "bloom", "olmo2", "qwen2-yarn", "gemma2", "gemma3", "llama-dynamic",
                                  "phi3-longrope"])
def test_greedy_matches_transformers_on_an_uneven_batch(name, hf_folder):
    """Mistral's window (4) is far shorter than prompt + 10 new tokens."""
    path, ref = hf_folder(name)
    model = gu.from_pretrained(path)
    ids, mask = _batch()
    with torch.no_grad():
        want = ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=2,
                            pad_token_id=0)
    got = model.generate(ids, NEW, attention_mask=mask, eos_token_id=2, pad_token_id=0)
    assert torch.equal(got, want[:, : got.shape[1]]), f"{name}\n{got}\n{want}"
    assert got.shape[1] == want.shape[1] or bool((want[:, got.shape[1]:] == 0).all())
    assert got.shape[1] > ids.shape[1] + 5  # the random models do not stop at once: a real comparison


@pytest.mark.parametrize("extra", [dict(pos="rope", n_kv_heads=2), dict(pos="learned"), dict(pos="alibi"),
                                   dict(pos="rope", sliding_window=3), dict(pos="sinusoidal", n_kv_heads=1),
                                   dict(pos="rope", sliding_window=3, layer_types=["local", "global"], attn_softcap=1.0,
                                        logit_softcap=2.0, norm_placement="sandwich", n_kv_heads=2)])
def test_each_row_decodes_as_it_would_alone(extra):
    """The cached, padded batch gives each prompt the uncached single-prompt continuation."""
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64,
                                  **extra))
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
    out = gu.generate(model, prompts, 12)
    assert out.shape == (3, 7 + 12)
    for b, p in enumerate(prompts):
        alone = generate_uncached(model, torch.tensor([p]), 12)[0, len(p):]
        assert torch.equal(out[b, 7:], alone), b


def test_sampling_with_a_seed_matches_the_uncached_reference():
    torch.manual_seed(1)
    model = gu.CausalLM(gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64))
    ids = torch.tensor([[5, 6, 7]])
    opts = dict(temperature=0.9, top_k=20, top_p=0.9)
    got = gu.generate(model, ids, 15, seed=3, **opts)
    want = generate_uncached(model, ids, 15, generator=torch.Generator().manual_seed(3), **opts)
    assert torch.equal(got, want)
    assert not torch.equal(got, gu.generate(model, ids, 15, seed=4, **opts))  # the seed matters


def test_repetition_penalty_matches_transformers(hf_folder):
    path, ref = hf_folder("llama")
    model = gu.from_pretrained(path)
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.generate(ids, max_new_tokens=NEW, do_sample=False, repetition_penalty=1.8, eos_token_id=None,
                            pad_token_id=0)
    got = model.generate(ids, NEW, repetition_penalty=1.8)
    assert torch.equal(got, want)
    assert not torch.equal(got, model.generate(ids, NEW))  # the penalty changed something


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 40), p=st.floats(0.05, 1.0))
@example(seed=1, k=1, p=0.9999999999999999)  # once dropped tail tokens (top-p summed from the top)
def test_filters_match_transformers_warpers(seed, k, p):
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 37, generator=g) * 3
    seen = torch.randint(0, 37, (3, 5), generator=g)
    assert torch.equal(top_k_filter(logits, k), TopKLogitsWarper(k)(seen, logits.clone()))
    ours, theirs = top_p_filter(logits, p), TopPLogitsWarper(p)(seen, logits.clone())
    assert torch.equal(ours.isinf(), theirs.isinf())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 1.5),
                               RepetitionPenaltyLogitsProcessor(1.5)(seen, logits.clone()))


def test_stop_ids_stop_rows_independently():
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64))
    prompts = [[3, 4, 5], [9, 8, 7, 6]]
    free = gu.generate(model, prompts, 12)
    stop = int(free[0, 4 + 2])  # the third token row 0 generates
    out = gu.generate(model, prompts, 12, eos_token_id=[stop, 60], pad_token_id=1)
    row0 = out[0, 4:].tolist()
    cut = row0.index(stop)
    assert row0[: cut + 1] == free[0, 4 : 4 + cut + 1].tolist() and set(row0[cut + 1:]) <= {1}
    if stop not in free[1, 4:].tolist() and 60 not in free[1, 4:].tolist():
        assert torch.equal(out[1, 4:], free[1, 4:])  # the other row goes on untouched


def test_static_cache_bytes_match_the_calculator():
    for kv in (4, 2, 1):  # MHA, GQA, MQA: only n_kv_heads are stored
        cfg = gu.Config(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=kv, d_ff=48, max_seq_len=64)
        model = gu.CausalLM(cfg).eval()
        cache = model.new_cache(40)
        with torch.no_grad():
            model(torch.randint(0, 61, (2, 9)), cache=cache)
        assert cache.length == 9
        assert cache.nbytes == calc.kv_cache_bytes(cfg, batch=2, seq_len=40, dtype=torch.float32)


def test_stream_yields_what_generate_returns():
    tok = gu.Tokenizer.train(["the cat sat on the mat. the dog ran after the cat. " * 20], 300,
                             special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=48,
                                  max_seq_len=64))
    prompt = [tok.encode("the cat"), tok.encode("a dog ran")]
    full = gu.generate(model, prompt, 8)
    steps = list(stream(model, prompt, 8))
    assert torch.equal(torch.stack(steps, 1), full[:, -8:])
    pieces = list(stream(model, prompt, 8, tokenizer=tok))
    for b in range(2):
        assert "".join(p[b] for p in pieces) == tok.decode(full[b, -8:].tolist())
    # stop strings: the first time the text contains the string, the row stops
    new = full[0, len(prompt[0]):].tolist()
    first3 = tok.decode(new[:3])
    stop = first3[-2:]
    assert stop
    out = gu.generate(model, prompt[:1], 8, stop_strings=[stop], tokenizer=tok)[0, len(prompt[0]):].tolist()
    assert new[: len(out)] == out
    assert stop in tok.decode(out) and stop not in tok.decode(out[:-1])


def test_bad_arguments_fail_before_any_compute():
    model = gu.CausalLM(gu.Config(vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=48, max_seq_len=16,
                                  pos="learned"))
    ids = torch.tensor([[1, 2, 3]])
    for kwargs, match in [(dict(max_new_tokens=0), "max_new_tokens=0"), (dict(top_p=0.0), "top_p=0.0"),
                          (dict(top_p=1.5), "top_p=1.5"), (dict(temperature=-1.0), "temperature=-1.0"),
                          (dict(top_k=0), "top_k=0"), (dict(repetition_penalty=0.0), "repetition_penalty"),
                          (dict(stop_strings=["x"]), "tokenizer"), (dict(max_new_tokens=14), "max_seq_len=16")]:
        with pytest.raises(ValueError, match=match):
            gu.generate(model, ids, **{"max_new_tokens": 4, **kwargs})
    long = torch.randint(0, 61, (1, 20))
    with pytest.raises(ValueError, match="more than the model's context of 16"):
        gu.generate(model, long, 2)
    out = gu.generate(model, long, 2, truncate=True)  # learned positions: keep 14 so that 2 more fit
    assert out.shape == (1, 16) and torch.equal(out[:, :14], long[:, -14:])
    with pytest.raises(ValueError, match="left"):
        gu.generate(model, ids, 2, attention_mask=torch.tensor([[1, 1, 0]]))


@pytest.mark.parametrize("pattern", [None, ["local", "global", "local"]])
def test_rolling_cache_stays_at_the_window_and_decodes_like_a_full_cache(pattern):
    """Sliding window 4: the ring holds 4 positions however long the decoding, and every step's logits
    equal those computed with a full (static) cache, for a left-padded row too. With a Gemma-style pattern
    only the local layers get a ring; the global one a static cache."""
    from groundup.nn.kv_cache import DecoderCache

    torch.manual_seed(0)
    cfg = gu.Config(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=256,
                    pos="rope", sliding_window=4, layer_types=pattern)
    model = gu.CausalLM(cfg).eval()
    ids = torch.randint(1, 61, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    rolling, full = model.new_cache(200), DecoderCache.static(cfg.n_layers, 200)
    kinds = [type(layer.self_kv).__name__ for layer in rolling.layers]
    assert kinds == (["RollingKVCache", "StaticKVCache", "RollingKVCache"] if pattern else ["RollingKVCache"] * 3)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    sizes = []
    with torch.no_grad():
        step, m = ids, mask
        for _ in range(60):
            a = model(step, attention_mask=m, position_ids=pos, cache=rolling, logits_to_keep=1)
            b = model(step, attention_mask=m, position_ids=pos, cache=full, logits_to_keep=1)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            sizes.append(rolling.nbytes)
            step = a[:, -1].argmax(-1, keepdim=True)
            m = torch.cat([m, torch.ones_like(step)], dim=1)
            pos = pos[:, -1:] + 1
    assert len(set(sizes)) == 1  # flat from the first step on (the global layer's 200 slots are preallocated)
    assert sizes[0] == calc.kv_cache_bytes(cfg, batch=2, seq_len=200, dtype=torch.float32)
    assert full.nbytes == calc.kv_cache_bytes(cfg.replace(sliding_window=None, layer_types=None), batch=2, seq_len=200,
                                              dtype=torch.float32)


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    tok = gu.Tokenizer.train(["the cat sat on the mat. the dog ran after the cat. " * 20], 300,
                             special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                                                 n_kv_heads=2, d_ff=48)
    folder = tmp_path_factory.mktemp("chat")
    gu.CausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok


def test_generate_cli_streams_the_greedy_continuation(chat_folder, capsys):
    from groundup.cli import main

    folder, tok = chat_folder
    assert main(["generate", str(folder), "the cat", "--max-new-tokens", "8"]) == 0
    model = gu.from_pretrained(folder)
    ids = tok.encode("the cat")
    want = model.generate([ids], 8, eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    want = [t for t in want if t != tok.eos_token_id]
    assert capsys.readouterr().out == "the cat" + tok.decode(want, skip_special_tokens=True) + "\n"
    assert main(["generate", str(folder / "missing"), "x"]) == 2
    assert main(["generate", str(folder), "x", "--top-p", "1.5"]) == 2
    assert "top_p=1.5" in capsys.readouterr().err
    # speculative decoding and a context extension give the same text here (greedy; short prompt)
    assert main(["generate", str(folder), "the cat", "--max-new-tokens", "8", "--draft", str(folder),
                 "--num-draft-tokens", "3", "--rope-scaling", "linear:2"]) == 0
    assert capsys.readouterr().out == "the cat" + tok.decode(want, skip_special_tokens=True) + "\n"
    assert main(["generate", str(folder), "x", "--rope-scaling", "linear"]) == 2
    assert "KIND:FACTOR" in capsys.readouterr().err


def test_chat_cli_uses_the_template_and_keeps_the_history(chat_folder, monkeypatch, capsys):
    import io

    from groundup.cli import main

    folder, tok = chat_folder
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand again\n\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "4", "--system", "be brief"]) == 0
    out = capsys.readouterr().out
    assert out.count("> ") == 3  # two turns, then the empty line ends the chat
    model = gu.from_pretrained(folder)
    first = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
                                    add_generation_prompt=True)
    stops = [tok.eos_token_id, tok.token_to_id("<|im_end|>")]
    reply = model.generate([first], 4, eos_token_id=stops)[0, len(first):].tolist()
    reply = tok.decode([t for t in reply if t not in stops], skip_special_tokens=True)
    assert out.startswith("> " + reply + "\n> ")


def test_attention_cli_writes_the_heatmap_of_the_eager_weights(chat_folder, tmp_path, monkeypatch, capsys):
    from groundup.cli import main

    folder, tok = chat_folder
    shown = {}
    import matplotlib.axes

    real_imshow = matplotlib.axes.Axes.imshow

    def spy(self, data, *args, **kwargs):
        shown["data"] = data
        return real_imshow(self, data, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    png = tmp_path / "maps" / "a.png"
    assert main(["attention", str(folder), "--text", "the cat sat", "--layer", "1", "--head", "3",
                 "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids = tok.encode("the cat sat")
    want = gu.from_pretrained(folder).attention_weights(torch.tensor([ids]), 1)[0, 3]
    torch.testing.assert_close(torch.as_tensor(shown["data"]), want)
    assert torch.allclose(want.sum(-1), torch.ones(len(ids))) and not want.triu(1).any()  # rows sum to 1, causal
    assert main(["attention", str(folder), "--text", "x", "--head", "9"]) == 2
    assert "--head 9" in capsys.readouterr().err


def test_context_extension_per_call_and_alibi_past_its_length():
    """A RoPE model trained to 16 positions takes a 24-token prompt only with a RoPE scaling, per call
    exactly as if the scaling were in its Config; an ALiBi model runs at 2.5x its length."""
    torch.manual_seed(0)
    cfg = gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16, pos="rope")
    model = randomize_(gu.CausalLM(cfg))  # large weights: positions visibly matter
    prompt = torch.randint(1, 61, (1, 24), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="rope_scaling"):
        gu.generate(model, prompt, 8)
    from groundup.generate.causal import decoding

    logits = {}
    for kind in ("linear", "ntk"):
        got = gu.generate(model, prompt, 8, rope_scaling=(kind, 2.0))
        assert model.config == cfg  # the call's scaling is gone afterwards
        scaled = gu.CausalLM(cfg.replace(rope_scaling=kind, rope_scaling_factor=2.0))
        scaled.load_state_dict(model.state_dict())
        assert torch.equal(got, gu.generate(scaled, prompt, 8))
        assert torch.equal(got, generate_uncached(scaled, prompt, 8))
        with torch.no_grad():
            with decoding(model, (kind, 2.0)):
                logits[kind] = model(prompt)
            torch.testing.assert_close(logits[kind], scaled.eval()(prompt), rtol=0, atol=1e-6)
    assert not torch.allclose(logits["linear"], logits["ntk"], atol=1e-3)  # the two scalings do differ
    with pytest.raises(ValueError, match="rope_scaling_factor"):
        gu.generate(model, prompt, 8, rope_scaling=("linear", 0.5))
    alibi = gu.CausalLM(cfg.replace(pos="alibi"))
    long = torch.randint(1, 61, (2, 40), generator=torch.Generator().manual_seed(1))
    assert torch.equal(gu.generate(alibi, long, 8), generate_uncached(alibi, long, 8))
    with pytest.raises(ValueError, match="needs a RoPE model"):
        gu.generate(alibi, long, 2, rope_scaling=("linear", 2.0))


@pytest.fixture(scope="module")
def detok_tokenizers(tmp_path_factory):
    from tokenizer.conftest import sentencepiece_style, unicode_text

    text = unicode_text(4000, seed=3)
    byte_level = gu.Tokenizer.train([text], 400, special_tokens=["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("sp")
    sp = gu.Tokenizer.from_file(sentencepiece_style(folder, text * 3, "metaspace", vocab_size=600))
    return {"byte-level": byte_level, "sentencepiece": sp}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["byte-level", "sentencepiece"]))
def test_detokenizer_pieces_join_to_the_decoded_text(detok_tokenizers, seed, name):
    """One token at a time, across newlines, multi-byte characters and byte-fallback tokens, the pieces
    join to decode(all ids); decoding restarts at newlines, so no piece depends on the whole history."""
    from tokenizer.conftest import unicode_text

    from groundup.generate.causal import Detokenizer

    tok = detok_tokenizers[name]
    ids = tok.encode(unicode_text(60, seed=seed), add_special_tokens=False)
    if name == "byte-level":  # arbitrary tokens too (byte fallback, below, judges a run of bytes as a whole)
        ids += torch.randint(0, tok.vocab_size, (20,), generator=torch.Generator().manual_seed(seed)).tolist()
    d = Detokenizer(tok)
    pieces = [d.push(t) for t in ids]
    assert "".join(pieces) + d.flush() == tok.decode(ids, skip_special_tokens=True)
    if "\n" in tok.decode(ids[:-3]):
        assert len(d.ids) < len(ids)  # the window restarted
