"""The text steps of BERT's tokenizer (Devlin et al., 2019), as tokenizers runs them: BertNormalizer (clean
control characters, space out CJK ideographs, strip accents, lowercase), BertPreTokenizer (split at
whitespace, isolate punctuation) and the WordPiece decoder (join ``##`` continuations, tidy spaces).

Character classes follow tokenizers' Rust definitions, which differ from Python's str methods in places:
whitespace is the Unicode White_Space property (not str.isspace, which also counts U+001C..U+001F),
"control" is any category C* except tab, newline and carriage return, punctuation is ASCII punctuation
plus categories P*, and lowercasing is per character (Python's str.lower turns a final capital sigma into
ς; Rust's char lowercasing always gives σ).
"""

from __future__ import annotations

import unicodedata

import regex

# the Unicode White_Space property (Rust's char::is_whitespace)
WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                       "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_CJK_RE = regex.compile("([" + "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in _CJK) + "])")
_WS_CLASS = "".join(f"\\u{ord(c):04x}" for c in sorted(WHITESPACE))
_PUNCT = r"[!-/:-@\[-`{-~\p{P}]"
_WORDS = regex.compile(f"{_PUNCT}|[^{_WS_CLASS}!-/:-@\\[-`{{-~\\p{{P}}]+")
# what cleaning changes: control characters, U+FFFD, and whitespace other than the plain space
_TO_CLEAN = regex.compile("[\\p{C}\ufffd" + "".join(f"\\u{ord(c):04x}" for c in sorted(WHITESPACE - {" "})) + "]")


def lowercase(s: str) -> str:
    """Per-character lowercase (no final-sigma rule), as tokenizers does."""
    return s.lower() if "Σ" not in s else "".join(c.lower() for c in s)


def _cleaned(m: regex.Match) -> str:
    c = m.group()
    if c in WHITESPACE and (c in "\t\n\r" or not unicodedata.category(c).startswith("C")):
        return " "
    return ""  # NUL, U+FFFD, any other control character (whitespace ones too: tokenizers drops them first)


def _clean(s: str) -> str:
    """Drop NUL, U+FFFD and control characters (keeping tab, newline, CR); every whitespace -> ' '."""
    return _TO_CLEAN.sub(_cleaned, s)


def bert_normalize(s: str, *, clean_text: bool = True, handle_chinese_chars: bool = True,
                   strip_accents: bool | None = None, lowercase_text: bool = True) -> str:
    """BertNormalizer: strip_accents None follows lowercase, as in tokenizers."""
    if clean_text:
        s = _clean(s)
    if handle_chinese_chars:
        s = _CJK_RE.sub(r" \1 ", s)
    if lowercase_text if strip_accents is None else strip_accents:
        s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
    return lowercase(s) if lowercase_text else s


def bert_split(text: str) -> list[str]:
    """BertPreTokenizer: whitespace removed, every punctuation character a word of its own."""
    return _WORDS.findall(text)


_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def wordpiece_decode(tokens: list[str], prefix: str = "##", cleanup: bool = True) -> list[str]:
    """The WordPiece decoder: a continuation loses its prefix, any other token but the first gains a space;
    with ``cleanup`` each piece's spaces before punctuation and English contractions are removed."""
    out = []
    for i, t in enumerate(tokens):
        if i:
            t = t[len(prefix):] if t.startswith(prefix) else " " + t
        if cleanup:
            for a, b in _CLEANUP:
                t = t.replace(a, b)
        out.append(t)
    return out
