"""WordPiece (BERT) and Unigram (T5, ALBERT, XLNet) tokenizer.json files, built offline with `tokenizers`:
identical ids, segment ids and attention masks on ~1 MB of multilingual text and code, truncation and
padding as the file sets them, saving that `tokenizers` reads back, and hypothesis properties."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from groundup import Tokenizer

from .conftest import bert_style, t5_style, unicode_text
from .test_components import same_unicode_tables
from .test_parity import assert_same_ids


@pytest.fixture(scope="session", params=["bert-uncased", "bert-cased", "t5-plain", "t5-bytes", "t5-precompiled"])
def pair(request, tmp_path_factory, corpus) -> tuple[Tokenizer, HFTokenizer, Path]:
    family, variant = request.param.split("-")
    build = bert_style if family == "bert" else t5_style
    path = build(tmp_path_factory.mktemp(request.param), corpus, variant)
    return Tokenizer.from_file(path), HFTokenizer.from_file(str(path)), path


def _megabyte(corpus: str) -> list[str]:
    text = corpus[:600_000] + unicode_text(60_000, seed=7)  # code, then many scripts: ~1 MB in all
    return [line for line in text.splitlines() if line.strip()]


def test_same_ids_as_tokenizers_on_a_megabyte(pair, corpus):
    gu, hf, _ = pair
    lines = _megabyte(corpus)
    assert len("\n".join(lines).encode()) > 900_000
    assert_same_ids(gu, hf, lines)


def test_pairs_segment_ids_and_masks_match(pair, corpus):
    gu, hf, _ = pair
    lines = _megabyte(corpus)[:400]
    a, b = lines[0::2], lines[1::2]
    mine = gu.encode_batch_plus(a, pairs=b)
    theirs = hf.encode_batch(list(zip(a, b, strict=True)))
    for m, t in zip(mine, theirs, strict=True):
        assert (m.ids, m.type_ids, m.attention_mask) == (t.ids, t.type_ids, t.attention_mask)


@pytest.mark.parametrize("padding", [{"length": 40}, {"length": None, "pad_to_multiple_of": 8},
                                     {"length": 32, "direction": "left"}])
@pytest.mark.parametrize("truncation", [{"max_length": 24}, {"max_length": 30, "strategy": "only_first"},
                                        {"max_length": 20, "direction": "left"}])
def test_truncation_and_padding_of_the_file(pair, corpus, tmp_path, padding, truncation):
    _, hf, _ = pair
    hf = HFTokenizer.from_str(hf.to_str())
    pad_id = hf.token_to_id("[PAD]") if hf.token_to_id("[PAD]") is not None else hf.token_to_id("<pad>")
    hf.enable_truncation(**truncation)
    hf.enable_padding(pad_id=pad_id, **padding)
    hf.save(str(tmp_path / "tokenizer.json"))
    gu = Tokenizer.from_file(tmp_path / "tokenizer.json")  # the settings come from the file
    lines = _megabyte(corpus)[1000:1100]
    for got, want in zip(gu.encode_batch_plus(lines), hf.encode_batch(lines), strict=True):
        assert (got.ids, got.attention_mask, got.type_ids) == (want.ids, want.attention_mask, want.type_ids)
    one, ref = gu.encode_plus(lines[3], pair=lines[4]), hf.encode(lines[3], lines[4])
    assert (one.ids, one.attention_mask, one.type_ids) == (ref.ids, ref.attention_mask, ref.type_ids)
    assert gu.encode(lines[5]) == hf.encode(lines[5]).ids
    gu.save(tmp_path / "again.json")  # and the settings survive a save
    again = HFTokenizer.from_file(str(tmp_path / "again.json"))
    assert [e.ids for e in again.encode_batch(lines)] == [e.ids for e in hf.encode_batch(lines)]


def test_saved_file_loads_in_tokenizers_with_the_same_ids(pair, corpus, tmp_path):
    gu, hf, _ = pair
    gu.save_pretrained(tmp_path)
    back = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    lines = _megabyte(corpus)[2000:2300]
    assert [e.ids for e in back.encode_batch(lines)] == [e.ids for e in hf.encode_batch(lines)]
    assert Tokenizer.from_pretrained(tmp_path).encode_batch(lines) == gu.encode_batch(lines)


def test_wordpiece_rules_by_hand(tmp_path):
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[UNK]", "un", "##aff", "##able", "a", "##b", "b", "!", "cafe"])}
    hf = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=10))
    hf.normalizer, hf.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    hf.save(str(tmp_path / "t.json"))
    gu = Tokenizer.from_file(tmp_path / "t.json")
    for text, tokens in [("unaffable!", ["un", "##aff", "##able", "!"]), ("ab b", ["a", "##b", "b"]),
                         ("unaffableab", ["[UNK]"]),  # 11 characters > 10: the whole word is unknown
                         ("abx", ["[UNK]"]),  # x matches nothing: the whole word, not just x
                         ("Café", ["cafe"])]:  # lowercased, accent stripped
        assert gu.tokenize(text) == tokens == hf.encode(text).tokens, text
    assert gu.decode(gu.encode("unaffable ab !")) == hf.decode(hf.encode("unaffable ab !").ids) == "unaffable ab!"


def test_unigram_viterbi_by_hand(tmp_path):
    from tokenizers import models

    pieces = [("<unk>", 0.0), ("a", -1.0), ("b", -1.0), ("ab", -1.5), ("abc", -4.0), ("c", -1.0), ("bc", -1.2)]
    hf = HFTokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    hf.save(str(tmp_path / "u.json"))
    gu = Tokenizer.from_file(tmp_path / "u.json")
    for text in ["abc", "abcab", "axyzb", "cab", "zz"]:  # best sums; unknown runs fuse into one <unk>
        assert gu.encode(text) == hf.encode(text).ids, text
    assert gu.tokenize("abc") == ["a", "bc"]  # -2.2 beats ab + c (-2.5) and abc (-4.0)
    assert gu.encode("axyzb") == [1, 0, 2]


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def same_bert_tables(text: str) -> bool:
    """Whether Python's Unicode 14 tables and the older ones of tokenizers' Rust crates agree on what is
    punctuation, control and accent for every character (U+2E52, punctuation since Unicode 14, is not
    punctuation there): text on which they differ says nothing about groundup's pipeline."""
    from tokenizers import normalizers, pre_tokenizers

    from groundup.tokenizer.bert_text import bert_normalize, bert_split

    pre, norm = pre_tokenizers.BertPreTokenizer(), normalizers.BertNormalizer(lowercase=False, strip_accents=True)
    return all(len(pre.pre_tokenize_str(f"a{c}a")) == len(bert_split(f"a{c}a"))
               and norm.normalize_str(c) == bert_normalize(c, lowercase_text=False, strip_accents=True)
               for c in set(text))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
@example(text="</s>")  # found by hypothesis in CI: a special token's text, which tokenizers encodes as it
@example(text="[CLS] a [SEP]")
def test_any_text_encodes_like_tokenizers(pair, text):
    gu, hf, _ = pair
    assume(same_unicode_tables(text) and all(unicodedata.category(c) != "Cn" for c in text))
    assume(same_bert_tables(text))
    ids = gu.encode(text, allowed_special="all")  # special-token text is the control token there too
    assert ids == hf.encode(text).ids
    assert gu.decode(ids, skip_special_tokens=True) == hf.decode(ids)


@pytest.fixture(scope="module")
def t5_bytes(tmp_path_factory, corpus) -> Tokenizer:
    return Tokenizer.from_file(t5_style(tmp_path_factory.mktemp("t5b"), corpus, "bytes"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
@example(text="</s>")
def test_byte_fallback_unigram_round_trips_the_normalized_text(t5_bytes, text):
    gu = t5_bytes
    assume(same_unicode_tables(text) and all(unicodedata.category(c) != "Cn" for c in text))
    normalized = unicodedata.normalize("NFKC", text)
    # Metaspace turns spaces into ▁ and prepends one (unless there is one); decoding turns them back and
    # drops the first space; byte fallback spells what no piece covers, so nothing is lost
    ids = gu.encode(text, add_special_tokens=False, disallowed_special=())  # "</s>" typed is text here
    assert gu.decode(ids) == normalized.removeprefix(" ")
