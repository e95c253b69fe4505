"""Property tests: lossless round trips for any str (surrogates and NUL included) and any bytes, and the
same ids as tokenizers for any valid Unicode text."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from groundup import Tokenizer

from .conftest import chunks, unicode_text

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Every code point Python allows in a str, lone surrogates included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
# Valid Unicode (what a Rust String can hold): no surrogates.
UNICODE = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=60)  # assigned (see test_components)
# Mixtures biased to the hard parts: spaces, newlines, digits, marks, emoji, specials.
PIECES = st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u00a0", "a", "Ab", "é", "e\u0301", "123456",
                                   "'s", "'LL", "日本", "🙂", "👩‍💻", "\x00", "<|endoftext|>", "▁", "x▁y", "-->"]),
                  max_size=20).map("".join)
# ... with lone surrogates (high, low, and the U+DC80..DCFF range PEP 383 uses for undecodable bytes).
WITH_SURROGATES = st.lists(st.one_of(PIECES, st.sampled_from(["\ud800", "\udbff", "\udc80", "\udcff", "\udfff"])),
                           max_size=8).map("".join)


@pytest.fixture(scope="module")
def trained(corpus) -> Tokenizer:
    return Tokenizer.train([*chunks(corpus[::17], 2048), unicode_text(2000)], 700, special_tokens=["<|endoftext|>"])


@SETTINGS
@given(text=st.one_of(ANY_TEXT, PIECES, WITH_SURROGATES))
def test_decode_encode_is_identity_for_any_str(trained, text):
    ids = trained.encode(text, disallowed_special=())
    assert trained.decode(ids) == text
    # special-token text allowed as control tokens also round-trips
    assert trained.decode(trained.encode(text, allowed_special="all")) == text


@SETTINGS
@given(data=st.binary(max_size=80))
def test_bytes_round_trip_for_any_bytes(trained, data):
    assert trained.decode_bytes(trained.encode_bytes(data, disallowed_special=())) == data


@SETTINGS
@given(text=st.one_of(UNICODE, PIECES))
def test_same_ids_as_tokenizers_bytelevel(trained, tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "prop_trained.json"
    if not path.exists():
        trained.save(path)
    hf = HFTokenizer.from_file(str(path))
    assert trained.encode(text, allowed_special="all") == hf.encode(text).ids
    ids = trained.encode(text, allowed_special="all")
    assert trained.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@SETTINGS
@given(text=st.one_of(UNICODE, PIECES))
def test_same_ids_as_tokenizers_sentencepiece(hf_sentencepiece, text):
    gu, hf = Tokenizer.from_file(hf_sentencepiece), HFTokenizer.from_file(str(hf_sentencepiece))
    ids = gu.encode(text, allowed_special="all")
    assert ids == hf.encode(text).ids
    assert gu.decode(ids) == hf.decode(ids, skip_special_tokens=False)


@SETTINGS
@given(ids=st.lists(st.integers(0, 699), max_size=30))
def test_decode_of_arbitrary_ids_matches_tokenizers(trained, tmp_path_factory, ids):
    """Random ids may cut UTF-8 sequences: both replace the broken bytes the same way. The one intended
    difference: bytes that UTF-8-encode a lone surrogate (ED A0..BF xx) decode here to that surrogate, so that
    any str round-trips, where tokenizers writes three U+FFFD (hypothesis found ids giving ED B5 AD)."""
    path = tmp_path_factory.getbasetemp() / "prop_trained.json"
    if not path.exists():
        trained.save(path)
    hf = HFTokenizer.from_file(str(path))
    ours = trained.decode(ids)
    assert re.sub("[\ud800-\udfff]", "\ufffd" * 3, ours) == hf.decode(ids, skip_special_tokens=False)


def test_an_encoded_lone_surrogate_is_the_one_decoding_difference(trained, tmp_path_factory):
    """The case hypothesis found: ours decodes ED B5 AD back to U+DD6D (round trip), tokenizers to 3 x U+FFFD."""
    path = tmp_path_factory.getbasetemp() / "prop_trained.json"
    if not path.exists():
        trained.save(path)
    ids = trained.encode("a\udd6db")
    assert trained.decode(ids) == "a\udd6db"
    assert HFTokenizer.from_file(str(path)).decode(ids, skip_special_tokens=False) == "a\ufffd\ufffd\ufffdb"
