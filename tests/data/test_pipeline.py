"""Data pipeline: sources, token cache, document split, packing, mixtures, span corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groundup import Tokenizer
from groundup.data import Mixture, Source, pack, span_corruption, tokenize_source
from groundup.data import tokens as tokens_mod
from groundup.data.objectives import span_corruption_lengths

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_docs(folder, name, n, seed, words=WORDS):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(5, 60))))
        (folder / f"{name}_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return str(folder / f"{name}_*.txt")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([" ".join(WORDS) * 3, "one two three four five six"], 300,
                           special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")


def test_source_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        Source(str(tmp_path / "*.txt")).files()
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="has no text"):
        list(Source(str(tmp_path / "empty.txt")).documents())
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.jsonl:3: no 'text' field \(found \['body'\]\)"):
        list(Source(str(tmp_path / "d.jsonl")).documents())
    with pytest.raises(ValueError, match="weight must be > 0"):
        Source("x", weight=0)


def test_jsonl_and_stdlib_sources(tmp_path):
    rows = [{"text": "first doc"}, {"text": "second doc", "id": 2}]
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
    assert list(Source(str(tmp_path / "a.jsonl")).documents()) == ["first doc", "second doc"]
    docs = list(Source("python-stdlib", max_bytes=200_000).documents())
    assert len(docs) > 3 and sum(map(len, docs)) >= 200_000


def test_token_cache_is_built_once_and_keyed_by_corpus_and_tokenizer(tmp_path, tok, monkeypatch):
    spec = write_docs(tmp_path / "c", "doc", 12, seed=0)
    src = Source(spec, name="c")
    data = tokenize_source(src, tok, tmp_path / "cache", eos_id=tok.eos_token_id)
    assert data.tokens.dtype == np.uint16 and data.n_docs == 12
    for d, text in enumerate(src.documents()):  # each document's ids, then EOS
        assert data.tokens[data.starts[d]:data.starts[d + 1]].tolist() == [*tok.encode(text), tok.eos_token_id]
    calls = []
    monkeypatch.setattr(tokens_mod, "_build", lambda *a, **k: calls.append(1))
    tokenize_source(src, tok, tmp_path / "cache", eos_id=tok.eos_token_id)
    assert calls == []  # unchanged corpus: the cache is reused
    (tmp_path / "c" / "doc_000.txt").write_text("changed text\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError):  # a changed file means a new key: a (stubbed, so empty) rebuild
        tokenize_source(src, tok, tmp_path / "cache", eos_id=tok.eos_token_id)
    assert calls == [1]


def test_an_interrupted_build_leaves_no_cache(tmp_path, tok, monkeypatch):
    spec = write_docs(tmp_path / "c", "doc", 5, seed=1)
    calls = {"n": 0}
    real = Tokenizer.encode

    def flaky(self, text, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, text, **kw)

    monkeypatch.setattr(Tokenizer, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        tokenize_source(Source(spec, name="c"), tok, tmp_path / "cache", eos_id=0)
    assert list((tmp_path / "cache").iterdir()) == []


def test_document_split_and_packing_boundaries(tmp_path, tok):
    data = tokenize_source(Source(write_docs(tmp_path / "c", "doc", 40, seed=2), name="c"), tok, tmp_path / "k",
                           eos_id=tok.eos_token_id)
    val = data.split_mask(0.2)
    assert np.array_equal(val, data.split_mask(0.2)) and 0 < val.sum() < 40  # deterministic, both sides
    train, held = data.stream(~val), data.stream(val)
    assert len(train) + len(held) == len(data.tokens)
    assert (train == tok.eos_token_id).sum() == (~val).sum()  # one EOS after every document
    blocks = pack(train, 16)
    assert blocks.shape == ((len(train) - 1) // 16, 17)
    assert np.array_equal(blocks[:, -1][:-1], blocks[1:, 0])  # inputs/targets overlap by one token
    assert np.array_equal(blocks[:, :-1].reshape(-1), train[: len(blocks) * 16])  # nothing lost or repeated


def test_mixture_shares_match_weights_and_resume_is_exact(tmp_path, tok):
    big = Source(write_docs(tmp_path / "big", "big", 60, seed=3), weight=0.8, name="big")
    small = Source(write_docs(tmp_path / "small", "small", 8, seed=4), weight=0.2, name="small")
    mix = Mixture([big, small], tok, 8, cache_dir=tmp_path / "cache", val_fraction=0.1, seed=5)
    counts = np.zeros(2)
    for _ in range(300):
        counts += np.bincount(mix.next_sources(16), minlength=2)
        mix.next_batch(16)
    assert abs(counts[0] / counts.sum() - 0.8) < 0.02
    epochs = mix.epochs(300 * 16 * 8)
    assert epochs["small"] > epochs["big"] > 0  # the small source is repeated more often
    state = mix.state_dict()
    expected = [mix.next_batch(16) for _ in range(3)]
    again = Mixture([big, small], tok, 8, cache_dir=tmp_path / "cache", val_fraction=0.1, seed=5)
    again.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    for x, y in expected:
        x2, y2 = again.next_batch(16)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    # data parallel: the ranks' rows are the single process's global batch, interleaved
    one = Mixture([big, small], tok, 8, cache_dir=tmp_path / "cache", val_fraction=0.1, seed=5)
    r0 = Mixture([big, small], tok, 8, cache_dir=tmp_path / "cache", val_fraction=0.1, seed=5)
    r1 = Mixture([big, small], tok, 8, cache_dir=tmp_path / "cache", val_fraction=0.1, seed=5)
    x, _ = one.next_batch(8)
    assert torch.equal(x[0::2], r0.next_batch(8, rank=0, world=2)[0])
    assert torch.equal(x[1::2], r1.next_batch(8, rank=1, world=2)[0])
    vx, vy = next(iter(mix.val_batches(4)))
    assert vx.shape[1] == 8 and torch.equal(vx[:, 1:], vy[:, :-1])


def test_mixture_input_errors(tmp_path, tok):
    src = Source(write_docs(tmp_path / "c", "doc", 2, seed=6), name="c")
    with pytest.raises(ValueError, match="fewer than one training block"):
        Mixture([src], tok, 10_000, cache_dir=tmp_path / "k")
    with pytest.raises(ValueError, match="unique"):
        Mixture([src, src], tok, 8, cache_dir=tmp_path / "k")
    with pytest.raises(ValueError, match="no source"):
        Mixture([], tok, 8, cache_dir=tmp_path / "k")


def test_span_corruption_shapes_and_reconstruction():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (4, 100), generator=g)
    sentinels = list(range(1099, 1099 - 100, -1))  # <extra_id_0> = 1099, <extra_id_1> = 1098, ...
    inputs, labels = span_corruption(ids, sentinel_ids=sentinels, eos_id=1, generator=g)
    n_noise, n_spans, in_len = span_corruption_lengths(100)
    assert (n_noise, n_spans) == (15, 5)
    assert inputs.shape == (4, in_len) and labels.shape == (4, n_noise + n_spans + 1)
    for row, src, tgt in zip(ids.tolist(), inputs.tolist(), labels.tolist(), strict=True):
        spans, cur = {}, None  # sentinel -> hidden tokens
        for t in tgt[:-1]:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [x for t in src[:-1] for x in (spans[t] if t in spans else [t])]
        assert rebuilt == row and src[-1] == tgt[-1] == 1
        assert [t for t in src if t in sentinels] == sentinels[:n_spans]
