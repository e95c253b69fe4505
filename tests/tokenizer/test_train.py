"""Training: the course example, exact agreement with tokenizers' BpeTrainer, streaming files and bad bytes."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from groundup import Tokenizer
from groundup.tokenizer.bpe import BPE, _merge_heap, to_byte_level
from groundup.tokenizer.components import GPT2_PATTERN
from groundup.tokenizer.train import count_words

from .conftest import chunks, unicode_text


def test_course_example_abababab():
    """Course 001: from {a, b}, 'abababab' merges ab (freq 4), then abab (3), then abababab (1)."""
    tok = Tokenizer.train(["abababab"], vocab_size=256 + 3)
    assert tok.model.merges == [("a", "b"), ("ab", "ab"), ("abab", "abab")]
    ids = tok.encode("abababab")
    assert len(ids) == 1 and tok.id_to_token(ids[0]) == "abababab"
    assert tok.decode(ids) == "abababab"
    # a bigger budget learns nothing more: no pair is left
    assert Tokenizer.train(["abababab"], vocab_size=300).model.merges == tok.model.merges
    # and min_frequency=2 stops before the pair seen once
    assert Tokenizer.train(["abababab"], 300, min_frequency=2).model.merges == [("a", "b"), ("ab", "ab")]


def hf_train(texts, vocab_size, **kw) -> dict:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **kw))
    return json.loads(hf.to_str())["model"]


@pytest.mark.parametrize("kw", [{}, {"special_tokens": ["<|endoftext|>", "<pad>"], "min_frequency": 3}])
def test_training_matches_tokenizers_exactly(corpus, kw):
    texts = [*chunks(corpus[::5], 2048), unicode_text(4000, seed=9)]
    theirs = hf_train(texts, 1800, **kw)
    mine = Tokenizer.train(texts, 1800, **kw)
    assert mine.model.vocab == theirs["vocab"]
    assert mine.model.merges == [tuple(m) for m in theirs["merges"]]


def test_training_on_files_streams_lines_like_tokenizers(tmp_path, corpus):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(corpus[:150_000], encoding="utf-8")
    b.write_text(unicode_text(5000, seed=2), encoding="utf-8")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train([str(a), str(b)], trainers.BpeTrainer(vocab_size=1000, show_progress=False,
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    theirs = json.loads(hf.to_str())["model"]
    for source in (str(tmp_path / "*.txt"), [a, b]):
        mine = Tokenizer.train(source, 1000)
        assert mine.model.vocab == theirs["vocab"]
        assert mine.model.merges == [tuple(m) for m in theirs["merges"]]


def test_invalid_utf8_in_a_training_file_is_kept_as_bytes(tmp_path):
    data = b"caf\xe9 caf\xe9 caf\xe9 \xff\xfe\xff\xfe ok ok\n" * 20 + b"valid \xc3\xa9t\xc3\xa9\n"
    (tmp_path / "bad.txt").write_bytes(data)
    counts = count_words(tmp_path / "bad.txt", GPT2_PATTERN)
    # the stray Latin-1 byte 0xE9 is counted as that byte (byte-level 'é'), not as U+FFFD or a surrogate
    assert counts[to_byte_level(b"\xe9")] == 60
    tok = Tokenizer.train(tmp_path / "bad.txt", 300)
    assert (to_byte_level(b"\xff"), to_byte_level(b"\xfe")) in tok.model.merges  # learned from raw bytes
    assert tok.decode_bytes(tok.encode_bytes(data)) == data


def test_vocab_size_and_input_errors(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(["x"], 100)
    with pytest.raises(FileNotFoundError, match="list of texts"):
        Tokenizer.train("no such corpus here", 300)
    with pytest.raises(TypeError, match="training item 1"):
        Tokenizer.train(["ok", b"bytes"], 300)
    with pytest.raises(ValueError, match="valid regular expression"):
        Tokenizer.train(["x"], 300, pattern="(unclosed")


def test_heap_merge_equals_scan_merge():
    """The two merge loops (short words rescan, long words use a heap) give the same symbols."""
    import random

    rng = random.Random(0)
    for trial in range(30):
        alphabet = "abcd"[: rng.randint(2, 4)]
        vocab = {c: i for i, c in enumerate(alphabet)}
        merges = []
        for _ in range(rng.randint(1, 12)):
            a, b = rng.choice(list(vocab)), rng.choice(list(vocab))
            if len(a + b) <= 6 and (a, b) not in merges:
                merges.append((a, b))
                vocab.setdefault(a + b, len(vocab))
        rng.shuffle(merges)  # deliberately not in training order
        bpe = BPE(vocab, merges)
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 120)))
        syms = bpe.symbols(word)
        scan = bpe.merge(list(syms)) if len(syms) <= 48 else None
        heap = _merge_heap(list(syms), bpe.merge_map)
        if scan is not None:
            assert scan == heap, (trial, word, merges)
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        assert hf.encode(word).ids == heap, (trial, word, merges)


def test_any_iterable_of_paths_or_texts_streams(tmp_path):
    (tmp_path / "a.txt").write_text("low lower lowest\n" * 50, encoding="utf-8")
    (tmp_path / "b.txt").write_text("new newer newest\n" * 50, encoding="utf-8")
    from_glob = Tokenizer.train(tmp_path.glob("*.txt"), 300)  # a generator of Paths
    from_gen = Tokenizer.train((line for p in sorted(tmp_path.glob("*.txt"))
                                for line in p.read_text().splitlines(keepends=True)), 300)
    assert from_glob.model.merges == from_gen.model.merges and len(from_glob.model.merges) > 10
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.train(iter([]), 300)


def test_decode_takes_tensors_and_arrays():
    import numpy as np
    import torch

    tok = Tokenizer.train(["hello world"], 270)
    ids = tok.encode("hello world")
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == tok.decode(ids) == "hello world"
