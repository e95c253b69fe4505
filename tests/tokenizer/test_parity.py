"""groundup.Tokenizer against HF `tokenizers`: identical ids and text on ~2 MB, both directions."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer

from groundup import Tokenizer

from .conftest import chunks, unicode_text


def assert_same_ids(gu: Tokenizer, hf: HFTokenizer, texts: list[str], skip_special: bool = True) -> None:
    mine = gu.encode_batch(texts, allowed_special="all")
    theirs = [e.ids for e in hf.encode_batch(texts)]
    for k, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            pytest.fail(f"text {k}: first difference at token {i}: groundup {a[i:i + 6]} "
                        f"({[gu.id_to_token(x) for x in a[i:i + 6]]}) vs tokenizers {b[i:i + 6]} "
                        f"({[gu.id_to_token(x) for x in b[i:i + 6]]}); text {texts[k][:80]!r}")
    for a, b in zip(mine[:50], theirs[:50], strict=False):
        assert gu.decode(a, skip_special_tokens=skip_special) == hf.decode(b, skip_special_tokens=skip_special)


def test_tokenizers_trained_bytelevel_loads_and_encodes_identically(hf_bytelevel, corpus):
    gu, hf = Tokenizer.from_file(hf_bytelevel), HFTokenizer.from_file(str(hf_bytelevel))
    texts = chunks(corpus)
    assert sum(len(t.encode()) for t in texts) > 2_000_000
    assert_same_ids(gu, hf, texts)
    # every text decodes back exactly (byte-level BPE is lossless)
    assert all(gu.decode(ids) == t for ids, t in zip(gu.encode_batch(texts[:8]), texts[:8], strict=False))
    assert gu.vocab_size == hf.get_vocab_size() and gu.get_vocab() == hf.get_vocab()


def test_groundup_trained_tokenizer_loads_in_tokenizers_and_transformers(tmp_path, corpus):
    tok = Tokenizer.train([*chunks(corpus[::9], 4096)], 1500, special_tokens=["<|endoftext|>", "<pad>"],
                          eos_token="<|endoftext|>", pad_token="<pad>")
    tok.save_pretrained(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    texts = [*chunks(corpus[:400000]), unicode_text(3000, seed=3), "x <|endoftext|> y<pad>"]
    assert_same_ids(tok, hf, texts, skip_special=False)

    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert fast.eos_token == "<|endoftext|>" and fast.pad_token_id == tok.pad_token_id == 1
    assert fast("def f(x): return x")["input_ids"] == tok.encode("def f(x): return x")
    # and back: the saved folder loads in groundup to the same tokenizer
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.model.merges == tok.model.merges and again.get_vocab() == tok.get_vocab()
    assert again.eos_token_id == tok.eos_token_id == 0


def test_sentencepiece_style_metaspace_byte_fallback(hf_sentencepiece, corpus):
    gu, hf = Tokenizer.from_file(hf_sentencepiece), HFTokenizer.from_file(str(hf_sentencepiece))
    assert gu._cut_metaspace, "merges never join '▁' to a previous character, so the text may be cut"
    texts = [*chunks(corpus[:600_000]), unicode_text(3000, seed=4), "  two  spaces ", " ", "", "x<s>y </s>z",
             "日本\x00\U0001F600 ‽ \u0378", "\n\n\t", "a" * 500]
    assert_same_ids(gu, hf, texts)
    assert_same_ids(gu, hf, texts[-8:], skip_special=False)
    # characters outside the vocabulary fall back to bytes, not <unk>
    ids = gu.encode("\U0001F600", add_special_tokens=False)
    assert [gu.id_to_token(i) for i in ids][-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_whole_text_bpe_when_merges_cross_the_metaspace(tmp_path):
    """A merge that joins '▁' to the character before it forbids cutting the text: the whole-text heap
    merge must then give tokenizers' ids."""
    from tokenizers import models, normalizers

    vocab = {c: i for i, c in enumerate("▁abc")}
    merges = [("a", "▁"), ("b", "▁"), ("▁", "a"), ("a▁", "b"), ("▁a", "b▁")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.save(str(tmp_path / "t.json"))
    gu = Tokenizer.from_file(tmp_path / "t.json")
    assert not gu._cut_metaspace
    texts = ["a b ab ba abc " * 20, "a " * 100, "b a b a", "ab" * 70]
    assert_same_ids(gu, hf, texts)


def test_llama3_style_split_regex_and_ignore_merges(tmp_path, corpus):
    """GPT-4 pattern Split + ByteLevel(use_regex=False), ignore_merges, BOS template: Llama-3's layout."""
    from tokenizers import models, pre_tokenizers, processors, trainers

    base = HFTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    base.train_from_iterator(chunks(corpus[::11], 4096), trainer)
    obj = json.loads(base.to_str())
    obj["model"]["ignore_merges"] = True
    obj["post_processor"] = json.loads(processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]).__getstate__())
    obj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(obj), encoding="utf-8")
    hf, gu = HFTokenizer.from_file(str(tmp_path / "tokenizer.json")), Tokenizer.from_file(tmp_path)
    texts = [*chunks(corpus[:300000]), unicode_text(2000, seed=5), "12345678 1,234 ABC's <|eot_id|>"]
    assert_same_ids(gu, hf, texts)
    assert gu.encode("hi")[0] == 0  # BOS from the template


def test_gpt4_pattern_training_matches_tokenizers(corpus):
    from tokenizers import Regex, models, pre_tokenizers, trainers

    from groundup.tokenizer.components import GPT4_PATTERN

    texts = chunks(corpus[::13], 2048)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=900, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    gu = Tokenizer.train(texts, 900, pattern="gpt4")
    theirs = json.loads(hf.to_str())["model"]
    assert gu.model.vocab == theirs["vocab"]
    assert gu.model.merges == [tuple(m) for m in theirs["merges"]]


def test_digits_pattern_one_token_per_digit_and_tokenizers_agree(corpus, tmp_path):
    """pattern="digits": numbers split into single digits (as Llama does) however often a multi-digit
    number occurs in training, and the saved tokenizer.json gives the same ids in tokenizers."""
    texts = [*chunks(corpus[::13], 2048), *(f"x = {n} + {n * 7}\n" for n in range(0, 5000, 3))]
    gu = Tokenizer.train(texts, 700, pattern="digits")
    text = "397 * 4429 = 1758313, v2.10 and 2024-01-31"
    pieces = [gu.decode([i]) for i in gu.encode(text, add_special_tokens=False)]
    assert "".join(pieces) == text
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
    merged = [gu.decode([i]) for i in gu.model.vocab.values()]
    assert not [w for w in merged if len(w) > 1 and any(c.isdigit() for c in w)]
    gu.save_pretrained(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert_same_ids(gu, hf, [text, *texts[:20]])


def test_added_tokens_strip_and_single_word_match_tokenizers(hf_bytelevel):
    from tokenizers import AddedToken as HFAdded

    hf = HFTokenizer.from_file(str(hf_bytelevel))
    hf.add_special_tokens([HFAdded("<mask>", lstrip=True), HFAdded("[SEP]", rstrip=True)])
    hf.add_tokens([HFAdded("hello", single_word=True), "wörld"])
    path = hf_bytelevel.parent / "added.json"
    hf.save(str(path))
    gu = Tokenizer.from_file(path)
    texts = ["a <mask> b", "x  [SEP]   y", "hello there, sayhello hello_ hello!", "WÖRLD wörld wörlds",
             "<mask><mask>[SEP][SEP]", "   <mask>"]
    assert_same_ids(gu, hf, texts, skip_special=False)
