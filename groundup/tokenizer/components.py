"""The stages around a BPE model, read from and written back to tokenizer.json.

encode: normalizer (text -> text) -> pre-tokenizer (text -> words) -> BPE (word -> ids) -> post-processor
(ids -> ids with BOS/EOS ...); decode: ids -> token strings -> decoder -> text. Each stage keeps the JSON
object it was built from, so saving writes back exactly what was loaded. The semantics follow HF
`tokenizers` (the tests compare ids and text with it); the supported types are the ones BPE tokenizers
use: GPT-2/NeoX/Llama-3 (byte-level) and Llama-2/Mistral (SentencePiece style, metaspace + byte fallback).
"""

from __future__ import annotations

import codecs
import unicodedata
from typing import Any

import regex

from .bert_text import bert_normalize, bert_split, lowercase, wordpiece_decode
from .bpe import BYTE_CHARS, CHAR_TO_BYTE
from .precompiled import Precompiled

# GPT-2's pre-tokenization pattern (Radford et al., 2019): contractions, letters, numbers, other symbols,
# whitespace. `ByteLevel(use_regex=true)` means this pattern.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The cl100k pattern (GPT-4, also Llama-3): case-insensitive contractions, at most 3 digits per number,
# newlines kept apart from other whitespace.
GPT4_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# GPT-2's pattern with every digit its own piece, as Llama's tokenizer splits numbers (Touvron et al., 2023):
# a number's tokens then line up with its place values, which is why LLaMA learns arithmetic where
# irregular multi-digit pieces make it hard (Liu & Low, 2023, Goat, section 3.1).
DIGITS_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "digits": DIGITS_PATTERN}

# tokenizers' whitespace is Unicode White_Space, which is also what `regex` means by \s.
_STRIP_LEFT = regex.compile(r"^\s+")
_STRIP_RIGHT = regex.compile(r"\s+$")


class UnsupportedTokenizer(ValueError):
    """A tokenizer.json this reader cannot run; the message names the field and the type."""


def _need(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise UnsupportedTokenizer(f"{where}: missing field {key!r}")
    return obj[key]


def _pattern(obj: dict, where: str) -> tuple[str, bool]:
    """A tokenizers pattern {"String": s} or {"Regex": r} -> (text, is_regex)."""
    if isinstance(obj, dict) and "String" in obj:
        return obj["String"], False
    if isinstance(obj, dict) and "Regex" in obj:
        return obj["Regex"], True
    raise UnsupportedTokenizer(f"{where}.pattern must be {{'String': ...}} or {{'Regex': ...}}, got {obj!r}")


def _compile(text: str, is_regex: bool, where: str) -> regex.Pattern:
    try:
        return regex.compile(text if is_regex else regex.escape(text))
    except regex.error as e:
        raise UnsupportedTokenizer(f"{where}: pattern {text!r} does not compile: {e}") from None


# ---------------------------------------------------------------------------------------------- splits
def split_spans(text: str, pattern: regex.Pattern, behavior: str, invert: bool = False) -> list[str]:
    """Split `text` on the matches of `pattern` the way tokenizers' SplitDelimiterBehavior does."""
    if behavior == "Isolated" and not invert and pattern.groups == 0:
        # Matches and the text between them, each a piece: the C-level split of a capturing wrapper.
        return [p for p in _capturing(pattern).split(text) if p]
    spans: list[tuple[int, int, bool]] = []  # (start, end, is_match) covering the text
    prev = 0
    for m in pattern.finditer(text):
        s, e = m.span()
        if s == e:
            continue
        if s > prev:
            spans.append((prev, s, invert))
        spans.append((s, e, not invert))
        prev = e
    if prev < len(text):
        spans.append((prev, len(text), invert))
    out: list[list[int]] = []
    if behavior == "Isolated":
        out = [[s, e] for s, e, _ in spans]
    elif behavior == "Removed":
        out = [[s, e] for s, e, m in spans if not m]
    elif behavior == "MergedWithPrevious":
        previous = False
        for s, e, m in spans:
            if m and not previous and out:
                out[-1][1] = e
            else:
                out.append([s, e])
            previous = m
    elif behavior == "MergedWithNext":
        previous = False
        for s, e, m in reversed(spans):
            if m and not previous and out:
                out[-1][0] = s
            else:
                out.append([s, e])
            previous = m
        out.reverse()
    elif behavior == "Contiguous":
        previous = False
        for s, e, m in spans:
            if m == previous and out:
                out[-1][1] = e
            else:
                out.append([s, e])
            previous = m
    else:
        raise UnsupportedTokenizer(f"split behavior {behavior!r} is not one of Removed, Isolated, "
                                   "MergedWithPrevious, MergedWithNext, Contiguous")
    return [text[s:e] for s, e in out if e > s]


_CAPTURING: dict[regex.Pattern, regex.Pattern] = {}


def _split_before(text: str, mark: str) -> list[str]:
    """split_spans(text, mark literally, "MergedWithNext"): every occurrence of the mark starts a piece."""
    first, *rest = text.split(mark)
    return [p for p in (first, *(mark + r for r in rest)) if p]


def _capturing(pattern: regex.Pattern) -> regex.Pattern:
    if pattern not in _CAPTURING:
        _CAPTURING[pattern] = regex.compile(f"({pattern.pattern})", pattern.flags)
    return _CAPTURING[pattern]


# ------------------------------------------------------------------------------------------ normalizers
class Normalizer:
    """text -> text. Built by `normalizer(obj)`; `json` is the object it came from."""

    def __init__(self, obj: dict, where: str):
        self.json = obj
        kind = obj.get("type")
        self.kind = kind
        if kind == "Sequence":
            self.parts = [Normalizer(o, f"{where}.normalizers[{i}]")
                          for i, o in enumerate(_need(obj, "normalizers", where))]
        elif kind in ("NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents"):
            pass
        elif kind == "Precompiled":
            try:
                self.precompiled = Precompiled(_need(obj, "precompiled_charsmap", where), where)
            except ValueError as e:
                raise UnsupportedTokenizer(str(e)) from None
        elif kind == "BertNormalizer":
            self.bert = dict(clean_text=obj.get("clean_text", True),
                             handle_chinese_chars=obj.get("handle_chinese_chars", True),
                             strip_accents=obj.get("strip_accents"), lowercase_text=obj.get("lowercase", True))
        elif kind == "Strip":
            self.left, self.right = obj.get("strip_left", True), obj.get("strip_right", True)
        elif kind == "Prepend":
            self.prepend = _need(obj, "prepend", where)
        elif kind == "Replace":
            text, is_re = _pattern(_need(obj, "pattern", where), where)
            self.literal = None if is_re else text
            self.regex = _compile(text, is_re, where)
            self.content = _need(obj, "content", where)
        else:
            raise UnsupportedTokenizer(f"{where}: normalizer type {kind!r} is not supported (supported: Sequence, "
                                       "NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip, Prepend, Replace, "
                                       "BertNormalizer, Precompiled)")

    def __call__(self, s: str) -> str:
        kind = self.kind
        if kind == "Sequence":
            for p in self.parts:
                s = p(s)
            return s
        if kind in ("NFC", "NFD", "NFKC", "NFKD"):
            return unicodedata.normalize(kind, s)
        if kind == "Lowercase":
            return lowercase(s)
        if kind == "BertNormalizer":
            return bert_normalize(s, **self.bert)
        if kind == "Precompiled":
            return self.precompiled(s)
        if kind == "StripAccents":
            # every combining mark (Mn, Mc, Me), as tokenizers strips them, not only the non-spacing ones
            return "".join(c for c in s if not unicodedata.category(c).startswith("M"))
        if kind == "Strip":
            if self.left:
                s = _STRIP_LEFT.sub("", s)
            return _STRIP_RIGHT.sub("", s) if self.right else s
        if kind == "Prepend":
            return self.prepend + s if s else s
        if self.literal is not None:  # Replace
            return s.replace(self.literal, self.content)
        return self.regex.sub(lambda _: self.content, s)


# -------------------------------------------------------------------------------------- pre-tokenizers
class PreStep:
    """One pre-tokenizer: a list of words -> a list of words. `first` says whether words[0] starts the
    original text (Metaspace's prepend_scheme 'first' depends on it)."""

    def __init__(self, obj: dict, where: str):
        self.json = obj
        kind = self.kind = obj.get("type")
        self.map_bytes = False
        if kind == "ByteLevel":
            self.add_prefix_space = obj.get("add_prefix_space", True)
            self.regex = regex.compile(GPT2_PATTERN) if obj.get("use_regex", True) else None
            self.map_bytes = True
        elif kind == "Split":
            text, is_re = _pattern(_need(obj, "pattern", where), where)
            self.regex = _compile(text, is_re, where)
            self.behavior = _need(obj, "behavior", where)
            self.invert = obj.get("invert", False)
            split_spans("", self.regex, self.behavior)  # validates the behavior now, not at the first encode
        elif kind == "Metaspace":
            self.replacement = obj.get("replacement", "▁")
            self.scheme = obj.get("prepend_scheme", "always" if obj.get("add_prefix_space", True) else "never")
            if self.scheme not in ("always", "first", "never"):
                raise UnsupportedTokenizer(f"{where}.prepend_scheme {self.scheme!r} is not always, first or never")
            self.split = obj.get("split", True)
        elif kind == "Digits":
            self.regex = regex.compile(r"\p{N}")
            self.behavior = "Isolated" if obj.get("individual_digits", False) else "Contiguous"
        elif kind == "Whitespace":
            self.regex = regex.compile(r"\w+|[^\w\s]+")
        elif kind == "WhitespaceSplit":
            self.regex = regex.compile(r"\s+")
        elif kind == "Punctuation":
            self.regex = regex.compile(r"[\p{P}!-/:-@\[-`{-~]")
            self.behavior = obj.get("behavior", "Isolated")
        elif kind == "BertPreTokenizer":
            pass
        else:
            raise UnsupportedTokenizer(f"{where}: pre_tokenizer type {kind!r} is not supported (supported: Sequence, "
                                       "ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, "
                                       "BertPreTokenizer)")

    def __call__(self, words: list[str], first: bool, map_bytes: bool = True) -> list[str]:
        kind, out = self.kind, []
        if kind == "ByteLevel":
            for w in words:
                if self.add_prefix_space and not w.startswith(" "):
                    w = " " + w
                out.extend(self.regex.findall(w) if self.regex is not None else [w])
            if map_bytes and self.map_bytes:
                out = [w.encode("utf-8", "surrogatepass").decode("latin-1").translate(_BYTE_TABLE) for w in out]
            return out
        if kind == "Metaspace":
            r = self.replacement
            for i, w in enumerate(words):
                w = w.replace(" ", r)
                if not w.startswith(r) and (self.scheme == "always" or (self.scheme == "first" and i == 0 and first)):
                    w = r + w
                out.extend(_split_before(w, r) if self.split else [w])
            return [w for w in out if w]
        if kind in ("Whitespace",):
            for w in words:
                out.extend(self.regex.findall(w))
            return out
        if kind == "BertPreTokenizer":
            for w in words:
                out.extend(bert_split(w))
            return out
        if kind == "WhitespaceSplit":
            for w in words:
                out.extend(split_spans(w, self.regex, "Removed"))
            return out
        invert = self.invert if kind == "Split" else False
        for w in words:
            out.extend(split_spans(w, self.regex, self.behavior, invert))
        return out


_BYTE_TABLE = dict(enumerate(BYTE_CHARS))
_BYTE_CHAR_SET = frozenset(BYTE_CHARS)
_TO_LATIN1 = {ord(c): b for c, b in CHAR_TO_BYTE.items()}  # byte-level character -> the byte's latin-1 char
_LITERALS: dict[str, regex.Pattern] = {}


def _literal(s: str) -> regex.Pattern:
    if s not in _LITERALS:
        _LITERALS[s] = regex.compile(regex.escape(s))
    return _LITERALS[s]


class PreTokenizer:
    """A flattened sequence of PreSteps. When the last step is ByteLevel its byte mapping can be left to
    the BPE word encoder (`byte_level_last`), so repeated words are looked up before any mapping work."""

    def __init__(self, obj: dict | None, where: str = "pre_tokenizer"):
        self.json = obj
        self.steps: list[PreStep] = []
        if obj is not None:
            self._flatten(obj, where)
        self.byte_level_last = bool(self.steps) and self.steps[-1].map_bytes
        self.byte_level = any(s.map_bytes for s in self.steps)

    def _flatten(self, obj: dict, where: str) -> None:
        if obj.get("type") == "Sequence":
            for i, o in enumerate(_need(obj, "pretokenizers", where)):
                self._flatten(o, f"{where}.pretokenizers[{i}]")
        else:
            self.steps.append(PreStep(obj, where))

    def __call__(self, text: str, first: bool, defer_bytes: bool = False) -> list[str]:
        words = [text] if text else []
        last = len(self.steps) - 1
        for i, step in enumerate(self.steps):
            words = step(words, first, map_bytes=not (defer_bytes and i == last))
        return words


# ---------------------------------------------------------------------------------------------- decoders
class Decoder:
    """token strings -> token strings; the decoded text is their concatenation."""

    def __init__(self, obj: dict, where: str):
        self.json = obj
        kind = self.kind = obj.get("type")
        if kind == "Sequence":
            self.parts = [Decoder(o, f"{where}.decoders[{i}]") for i, o in enumerate(_need(obj, "decoders", where))]
        elif kind in ("ByteLevel", "ByteFallback", "Fuse"):
            pass
        elif kind == "Metaspace":
            self.replacement = obj.get("replacement", "▁")
            self.scheme = obj.get("prepend_scheme", "always" if obj.get("add_prefix_space", True) else "never")
        elif kind == "Replace":
            text, is_re = _pattern(_need(obj, "pattern", where), where)
            self.literal = None if is_re else text
            self.regex = _compile(text, is_re, where)
            self.content = _need(obj, "content", where)
        elif kind == "Strip":
            self.content, self.start, self.stop = obj.get("content", " "), obj.get("start", 0), obj.get("stop", 0)
        elif kind == "BPEDecoder":
            self.suffix = obj.get("suffix", "</w>")
        elif kind == "WordPiece":
            self.prefix, self.cleanup = obj.get("prefix", "##"), obj.get("cleanup", True)
        else:
            raise UnsupportedTokenizer(f"{where}: decoder type {kind!r} is not supported (supported: Sequence, "
                                       "ByteLevel, ByteFallback, Fuse, Metaspace, Replace, Strip, BPEDecoder, "
                                       "WordPiece)")

    def __call__(self, tokens: list[str]) -> list[str]:
        kind = self.kind
        if kind == "Sequence":
            for p in self.parts:
                tokens = p(tokens)
            return tokens
        if kind == "ByteLevel":
            text = "".join(tokens)
            if not set(text) - _BYTE_CHAR_SET:  # all byte-level characters: one C-level translate
                return [decode_utf8(text.translate(_TO_LATIN1).encode("latin-1"))]
            data = bytearray()
            for t in tokens:
                try:
                    data.extend(CHAR_TO_BYTE[c] for c in t)
                except KeyError:  # not a byte-level string (an added token such as '<|im▁start|>')
                    data.extend(t.encode("utf-8", "surrogatepass"))
            return [decode_utf8(bytes(data))]
        if kind == "Fuse":
            return ["".join(tokens)]
        if kind == "ByteFallback":
            out, pending = [], bytearray()
            for t in tokens:
                if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                    try:
                        pending.append(int(t[3:5], 16))
                        continue
                    except ValueError:
                        pass
                if pending:
                    out.append(_fallback_text(bytes(pending)))
                    pending.clear()
                out.append(t)
            if pending:
                out.append(_fallback_text(bytes(pending)))
            return out
        if kind == "Metaspace":
            out = []
            for i, t in enumerate(tokens):
                t = t.replace(self.replacement, " ")
                if i == 0 and self.scheme != "never" and t.startswith(" "):
                    t = t[1:]
                out.append(t)
            return out
        if kind == "Replace":
            if self.literal is not None:
                old, new = self.literal, self.content
                return [t.replace(old, new) for t in tokens]
            return [self.regex.sub(lambda _: self.content, t) for t in tokens]
        if kind == "Strip":
            return [_strip_chars(t, self.content, self.start, self.stop) for t in tokens]
        if kind == "WordPiece":
            return wordpiece_decode(tokens, self.prefix, self.cleanup)
        # BPEDecoder: the end-of-word suffix becomes a space, except after the last token.
        n = len(tokens)
        return [t.replace(self.suffix, "" if i == n - 1 else " ") for i, t in enumerate(tokens)]


def _strip_chars(t: str, ch: str, start: int, stop: int) -> str:
    a = 0
    while a < min(start, len(t)) and t[a] == ch:
        a += 1
    b = len(t)
    while stop and len(t) - b < stop and b > a and t[b - 1] == ch:
        b -= 1
    return t[a:b]


def _fallback_text(data: bytes) -> str:
    """Bytes from <0x..> tokens: their text, or one U+FFFD per byte when they are not valid UTF-8 (as
    tokenizers' ByteFallback); UTF-8-encoded lone surrogates come back as the surrogates."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return "\ufffd" * len(data)


def _replace_or_surrogate(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decoding error handler: a UTF-8-encoded lone surrogate (ED A0..BF xx) decodes to the surrogate, so
    text with lone surrogates round-trips; any other invalid byte run becomes U+FFFD like 'replace'."""
    data, i = err.object, err.start
    if len(data) >= i + 3 and data[i] == 0xED and 0xA0 <= data[i + 1] <= 0xBF and 0x80 <= data[i + 2] <= 0xBF:
        return chr(((data[i + 1] & 0x3F) << 6 | (data[i + 2] & 0x3F)) + 0xD000), i + 3
    return "\ufffd", err.end


def decode_utf8(data: bytes) -> str:
    """UTF-8 -> str. Invalid bytes become U+FFFD (one per maximal invalid run, as tokenizers); encoded lone
    surrogates are kept (see `_replace_or_surrogate`)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "groundup.surrogates")


codecs.register_error("groundup.surrogates", _replace_or_surrogate)


# ------------------------------------------------------------------------------------- post-processors
class PostProcessor:
    """ids -> ids with the special tokens a model expects (Llama's <s>, RoBERTa's <s> ... </s>)."""

    def __init__(self, obj: dict, where: str):
        self.json = obj
        kind = self.kind = obj.get("type")
        if kind == "Sequence":
            self.parts = [PostProcessor(o, f"{where}.processors[{i}]")
                          for i, o in enumerate(_need(obj, "processors", where))]
        elif kind == "ByteLevel":
            pass  # it only trims offsets, ids are untouched
        elif kind == "TemplateProcessing":
            specials = {k: v["ids"] for k, v in obj.get("special_tokens", {}).items()}
            self.single = self._template(_need(obj, "single", where), specials, f"{where}.single")
            self.pair = self._template(obj.get("pair") or [], specials, f"{where}.pair")
        elif kind in ("RobertaProcessing", "BertProcessing"):
            cls, sep = _need(obj, "cls", where), _need(obj, "sep", where)
            c, s = [cls[1]], [sep[1]]
            second = 0 if kind == "RobertaProcessing" else 1  # RoBERTa has no segment embeddings
            self.single = [("ids", c, 0), ("A", None, 0), ("ids", s, 0)]
            middle = [("ids", s, 0), ("ids", s, 0)] if kind == "RobertaProcessing" else [("ids", s, 0)]
            self.pair = [("ids", c, 0), ("A", None, 0), *middle, ("B", None, second), ("ids", s, second)]
        else:
            raise UnsupportedTokenizer(f"{where}: post_processor type {kind!r} is not supported (supported: "
                                       "Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing)")
        # The part that adds tokens, found once: a Sequence holds ByteLevel (it only trims offsets) and a template.
        if kind == "Sequence":
            self.template = next((p.template for p in self.parts if p.kind != "ByteLevel"), None)
        else:
            self.template = None if kind == "ByteLevel" else self

    @staticmethod
    def _template(items: list, specials: dict, where: str) -> list[tuple[str, Any, int]]:
        """[(piece: 'A', 'B' or 'ids', the special ids or None, type id)] of a template."""
        out = []
        for i, item in enumerate(items):
            if "Sequence" in item:
                out.append((item["Sequence"]["id"], None, int(item["Sequence"].get("type_id", 0))))
            elif "SpecialToken" in item:
                name = item["SpecialToken"]["id"]
                if name not in specials:
                    raise UnsupportedTokenizer(f"{where}[{i}]: special token {name!r} has no entry in special_tokens")
                out.append(("ids", specials[name], int(item["SpecialToken"].get("type_id", 0))))
            else:
                raise UnsupportedTokenizer(f"{where}[{i}]: expected Sequence or SpecialToken, got {item!r}")
        return out

    def added(self, pair: bool) -> int:
        """How many special tokens processing adds (what truncation keeps room for)."""
        t = self.template
        return 0 if t is None else sum(len(ids) for name, ids, _ in (t.pair if pair else t.single) if name == "ids")

    def process(self, a: list[int], b: list[int] | None = None) -> tuple[list[int], list[int]]:
        """(ids, type ids) with the template's special tokens; without one, a then b with types 0 and 1."""
        t = self.template
        if t is None:
            return a + (b or []), [0] * len(a) + [1] * len(b or [])
        ids: list[int] = []
        types: list[int] = []
        for name, special, type_id in (t.single if b is None else t.pair):
            part = special if name == "ids" else a if name == "A" else b
            ids.extend(part)
            types.extend([type_id] * len(part))
        return ids, types

    def __call__(self, a: list[int], b: list[int] | None = None) -> list[int]:
        """The ids alone: what a plain encode needs, without building type ids."""
        t = self.template
        if t is None:
            return a + (b or [])
        out: list[int] = []
        for name, special, _ in (t.single if b is None else t.pair):
            out.extend(special if name == "ids" else a if name == "A" else b)
        return out


def normalizer(obj: dict | None) -> Normalizer | None:
    return None if obj is None else Normalizer(obj, "normalizer")


def decoder(obj: dict | None) -> Decoder | None:
    return None if obj is None else Decoder(obj, "decoder")
