"""`groundup.Tokenizer`: text <-> ids with a BPE model, its pipeline, added tokens and a chat template.

Special tokens are never split or merged: the text is first cut at added tokens, and only the pieces
between them go through normalizer -> pre-tokenizer -> BPE. Which special tokens count as control tokens
in user text is explicit (`allowed_special` / `disallowed_special`, the tiktoken convention): by default
a special token's text inside `encode`'s input is an error, so "<|endoftext|>" typed by a user is never
silently turned into a control token.

Text policy: input is any Python str. A lone surrogate (not valid Unicode, but a legal str) is written as
its 3-byte generalized UTF-8 form and decodes back to itself, so decode(encode(s)) == s for every s with
a byte-level model. Invalid UTF-8 in files is kept byte for byte by `encode_bytes` / `decode_bytes`.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import regex

from . import chat, gguf_vocab, hf_format
from . import train as bpe_training
from .bpe import BPE, CHAR_TO_BYTE, merges_cross, to_byte_level
from .components import Decoder, Normalizer, PostProcessor, PreTokenizer
from .encoding import AddedToken, Encoding, Padding, Truncation

_WORD_CHAR = regex.compile(r"[\w]")
_SPACE = regex.compile(r"\s")


class _WordIds(dict):
    """word -> ids, filled on first sight; `dict.__getitem__` stays C-speed for the (many) repeats."""

    def __init__(self, model: BPE, byte_level: bool, errors: str):
        super().__init__()
        self.model, self.byte_level, self.errors = model, byte_level, errors

    def __missing__(self, word: str) -> tuple[int, ...]:
        key = to_byte_level(word.encode("utf-8", self.errors)) if self.byte_level else word
        ids = self.model.encode_word(key)
        if len(self) >= 500_000:  # bound memory on endless streams of new words
            self.clear()
        self[word] = ids
        return ids


Special = Collection[str] | str
Names = Collection[str]


class Tokenizer:
    """A BPE tokenizer: `from_file` / `from_pretrained` read HF tokenizer.json folders, `train` learns one,
    `save_pretrained` writes one that HF `tokenizers` and transformers load."""

    def __init__(self, model: BPE, *, normalizer: Normalizer | None = None, pre_tokenizer: PreTokenizer | None = None,
                 post_processor: PostProcessor | None = None, decoder: Decoder | None = None,
                 added_tokens: Iterable[AddedToken] = (), config: dict | None = None,
                 chat_template: str | dict[str, str] | None = None, extra: dict | None = None):
        self.model = model
        self.normalizer = normalizer
        self.pre_tokenizer = pre_tokenizer or PreTokenizer(None)
        self.post_processor = post_processor
        self.decoder = decoder
        self.config: dict[str, Any] = dict(config or {})  # tokenizer_config.json
        self.chat_template = chat_template
        self.extra: dict[str, Any] = dict(extra or {})  # tokenizer.json fields kept for saving (truncation ...)
        self._set_limits()
        self.added: list[AddedToken] = []
        self._set_added(list(added_tokens))
        self._setup()

    # ------------------------------------------------------------------------------------- set-up
    def _setup(self) -> None:
        pre = self.pre_tokenizer
        self._defer_bytes = pre.byte_level_last
        self._words = _WordIds(self.model, self._defer_bytes, "surrogatepass")
        self._words_raw = _WordIds(self.model, self._defer_bytes, "surrogateescape")
        # SentencePiece style with no pre-tokenizer: BPE runs on the whole text. When no merge joins a
        # metaspace to the character before it, cutting there changes nothing and makes words cacheable.
        mark = "▁"
        whole = all(s.kind == "Metaspace" and not s.split for s in pre.steps)
        self._cut_metaspace = (whole and isinstance(self.model, BPE) and mark in self.model.vocab
                               and not merges_cross(self.model, mark))
        # GPT-2 style (one ByteLevel regex step, no prefix space): the words are the regex's matches.
        steps = pre.steps
        self._findall = None
        if (len(steps) == 1 and steps[0].kind == "ByteLevel" and steps[0].regex is not None
                and not steps[0].add_prefix_space):
            self._findall = steps[0].regex.findall

    def _set_limits(self) -> None:
        self.truncation = Truncation.from_json(self.extra.get("truncation"), "tokenizer.json: truncation")
        self.padding = Padding.from_json(self.extra.get("padding"), "tokenizer.json: padding")

    def enable_truncation(self, max_length: int, *, strategy: str = "LongestFirst", direction: str = "Right") -> None:
        """Cut encodings to ``max_length`` tokens, special tokens included (tokenizers' enable_truncation)."""
        self.extra["truncation"] = {"direction": direction, "max_length": max_length, "strategy": strategy,
                                    "stride": 0}
        self._set_limits()

    def enable_padding(self, *, length: int | None = None, direction: str = "Right", pad_id: int | None = None,
                       pad_type_id: int = 0, pad_token: str | None = None, pad_to_multiple_of: int | None = None
                       ) -> None:
        """Pad encodings to ``length``, or to the longest of a batch when None (tokenizers' enable_padding)."""
        pad_id = self.pad_token_id if pad_id is None else pad_id
        self.extra["padding"] = {"strategy": {"Fixed": length} if length is not None else "BatchLongest",
                                 "direction": direction, "pad_to_multiple_of": pad_to_multiple_of,
                                 "pad_id": pad_id or 0, "pad_type_id": pad_type_id,
                                 "pad_token": pad_token or self.pad_token or "[PAD]"}
        self._set_limits()

    def no_truncation(self) -> None:
        self.extra.pop("truncation", None)
        self._set_limits()

    def no_padding(self) -> None:
        self.extra.pop("padding", None)
        self._set_limits()

    def _set_added(self, tokens: list[AddedToken]) -> None:
        self.added = sorted(tokens, key=lambda t: t.id)
        self.added_by_id = {t.id: t for t in self.added}
        self.added_by_content = {t.content: t for t in self.added}
        self._specials = frozenset(t.content for t in self.added if t.special)
        self._special_ids = frozenset(t.id for t in self.added if t.special)
        self._id_to_str = {**self.model.id_to_token, **{t.id: t.content for t in self.added}}
        self._matchers: dict[tuple[bool, bool], regex.Pattern | None] = {}
        for normalized in (False, True):
            group = sorted({t.content for t in self.added if t.normalized == normalized and t.content},
                           key=lambda c: (-len(c), c))  # longest first: leftmost-longest matching
            self._matchers[normalized] = regex.compile("|".join(map(regex.escape, group))) if group else None

    def add_special_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Add control tokens (matched whole, never split); returns their ids (existing ones are reused)."""
        return self._add(tokens, special=True)

    def add_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Add plain added tokens (matched whole in normalized text)."""
        return self._add(tokens, special=False)

    def _add(self, tokens: Iterable[str], special: bool) -> list[int]:
        new, ids = list(self.added), []
        for content in tokens:
            if not content:
                raise ValueError("an added token cannot be the empty string")
            if content in self.added_by_content:
                ids.append(self.added_by_content[content].id)
                continue
            tid = self.model.vocab.get(content)
            if tid is None:
                tid = max(self.vocab_size, max((t.id for t in new), default=-1) + 1)
            new.append(AddedToken(tid, content, special=special, normalized=not special))
            ids.append(tid)
        self._set_added(new)
        return ids

    # ---------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids (model vocabulary and added tokens): the embedding rows a model needs."""
        top = max(max(self.model.id_to_token, default=-1), max(self.added_by_id, default=-1))
        return top + 1

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self.model.vocab)
        vocab.update({t.content: t.id for t in self.added})
        return vocab

    def token_to_id(self, token: str) -> int | None:
        t = self.added_by_content.get(token)
        return t.id if t is not None else self.model.vocab.get(token)

    def id_to_token(self, tid: int) -> str | None:
        t = self.added_by_id.get(tid)
        return t.content if t is not None else self.model.id_to_token.get(tid)

    @property
    def special_tokens(self) -> list[str]:
        return [t.content for t in self.added if t.special]

    def _config_token(self, name: str) -> str | None:
        v = self.config.get(name)
        return v.get("content") if isinstance(v, dict) else v

    @property
    def bos_token(self) -> str | None:
        return self._config_token("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self._config_token("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self._config_token("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.token_to_id(self.pad_token)

    # --------------------------------------------------------------------------------------- encode
    def _allowed(self, allowed_special: Special, disallowed_special: Special) -> tuple[Names, Names]:
        specials = self._specials
        if allowed_special == "all" and disallowed_special == "all":
            return specials, frozenset()
        allowed = specials if allowed_special == "all" else set(allowed_special)
        unknown = allowed - specials
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)}, which are not special tokens of this "
                             f"tokenizer (its special tokens: {sorted(specials)[:20]})")
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        return allowed, disallowed

    def _split_added(self, text: str, normalized: bool, offset0: bool, allowed: Names, disallowed: Names,
                     out: list[tuple[str, int | None, bool]]) -> None:
        """Append (text piece, None, starts the text) and (token text, token id, _) items to `out`."""
        matcher = self._matchers[normalized]
        if matcher is None:
            out.append((text, None, offset0))
            return
        pos = 0
        for m in matcher.finditer(text):
            start, stop = m.span()
            if start < pos:
                continue
            tok = self.added_by_content[m.group()]
            if tok.special and tok.content not in allowed:
                if tok.content in disallowed:
                    raise ValueError(
                        f"the text contains the special token {tok.content!r} at character {start}: pass "
                        f"allowed_special={{{tok.content!r}}} (or 'all') to encode it as the control token, or "
                        "disallowed_special=() to encode it as plain text")
                continue  # plain text
            if tok.single_word and ((start > 0 and _WORD_CHAR.match(text, start - 1))
                                    or (stop < len(text) and _WORD_CHAR.match(text, stop))):
                continue
            if tok.lstrip:
                while start > pos and _SPACE.match(text, start - 1):
                    start -= 1
            if tok.rstrip:
                while stop < len(text) and _SPACE.match(text, stop):
                    stop += 1
            if start > pos:
                out.append((text[pos:start], None, offset0 and pos == 0))
            out.append((text[start:stop], tok.id, False))
            pos = stop
        if pos < len(text):
            out.append((text[pos:], None, offset0 and pos == 0))

    def _words_of(self, text: str, first: bool) -> list[str]:
        """Normalized text -> the words BPE sees (raw text when the byte mapping is deferred)."""
        if self._findall is not None:
            return self._findall(text)
        words = self.pre_tokenizer(text, first, defer_bytes=self._defer_bytes)
        if self._cut_metaspace:
            words = [w for piece in words for w in _cut_before_mark(piece)]
        return words

    def _encode_one(self, text: str, allowed: Names, disallowed: Names, raw: bool) -> list[int]:
        pieces: list[tuple[str, int | None, bool]] = []
        self._split_added(text, False, True, allowed, disallowed, pieces)
        if self.normalizer is not None or self._matchers[True] is not None:
            again: list[tuple[str, int | None, bool]] = []
            for piece, tid, first in pieces:
                if tid is None:
                    piece = self.normalizer(piece) if self.normalizer is not None else piece
                    self._split_added(piece, True, first, allowed, disallowed, again)
                else:
                    again.append((piece, tid, first))
            pieces = again
        words = self._words_raw if raw else self._words
        ids: list[int] = []
        for piece, tid, first in pieces:
            if tid is not None:
                ids.append(tid)
            elif piece:
                ids.extend(itertools.chain.from_iterable(map(words.__getitem__, self._words_of(piece, first))))
        return ids

    def encode(self, text: str, *, allowed_special: Special = (), disallowed_special: Special = "all",
               add_special_tokens: bool = True, pair: str | None = None) -> list[int]:
        """Text -> token ids.

        allowed_special: special tokens ("all" or a set) that become control tokens where they appear in
        `text`. disallowed_special: special tokens whose appearance raises ValueError ("all" = every special
        token not allowed; () = encode them as plain text). add_special_tokens: apply the post-processor
        (e.g. Llama's BOS), as HF does. pair: a second text for pair templates (BERT/RoBERTa style).
        """
        if self.truncation is not None or self.padding is not None:
            return self.encode_plus(text, pair=pair, allowed_special=allowed_special,
                                    disallowed_special=disallowed_special, add_special_tokens=add_special_tokens).ids
        _check_text(text, pair)
        allowed, disallowed = self._allowed(allowed_special, disallowed_special)
        ids = self._encode_one(text, allowed, disallowed, raw=False)
        second = None if pair is None else self._encode_one(pair, allowed, disallowed, raw=False)
        return self._ids(ids, second, add_special_tokens)

    def _ids(self, ids: list[int], pair: list[int] | None, add_special_tokens: bool) -> list[int]:
        """The ids alone (no truncation or padding set): no segment ids or masks are built."""
        if add_special_tokens and self.post_processor is not None:
            return self.post_processor(ids, pair)
        return ids + (pair or [])

    def encode_plus(self, text: str, *, pair: str | None = None, allowed_special: Special = (),
                    disallowed_special: Special = "all", add_special_tokens: bool = True) -> Encoding:
        """Like encode, with the segment ids and attention mask too (an Encoding). The file's truncation and
        padding settings apply, as tokenizers applies them (padding to a fixed length, if set)."""
        _check_text(text, pair)
        allowed, disallowed = self._allowed(allowed_special, disallowed_special)
        ids = self._encode_one(text, allowed, disallowed, raw=False)
        second = None if pair is None else self._encode_one(pair, allowed, disallowed, raw=False)
        return self._pad([self._finish(ids, second, add_special_tokens)])[0]

    def encode_bytes(self, data: bytes, *, allowed_special: Special = (), disallowed_special: Special = "all",
                     add_special_tokens: bool = True) -> list[int]:
        """Raw bytes -> ids, keeping invalid UTF-8 byte for byte (byte-level models; see decode_bytes)."""
        allowed, disallowed = self._allowed(allowed_special, disallowed_special)
        text = data.decode("utf-8", "surrogateescape")
        ids = self._encode_one(text, allowed, disallowed, raw=True)
        return self._pad([self._finish(ids, None, add_special_tokens)])[0].ids

    def _finish(self, ids: list[int], pair: list[int] | None, add_special_tokens: bool) -> Encoding:
        """Truncate (leaving room for the special tokens), then add them: tokenizers' post_process order."""
        post = self.post_processor if add_special_tokens else None
        if self.truncation is not None:
            ids, pair = self.truncation.apply(ids, pair, post.added(pair is not None) if post is not None else 0)
        if post is not None:
            out, types = post.process(ids, pair)
        else:
            out, types = ids + (pair or []), [0] * len(ids) + [1] * len(pair or [])
        return Encoding(out, types, [1] * len(out))

    def _pad(self, batch: list[Encoding]) -> list[Encoding]:
        return self.padding.apply(batch) if self.padding is not None else batch

    def encode_batch(self, texts: Sequence[str], *, allowed_special: Special = (), disallowed_special: Special = "all",
                     add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` for each text (same keyword arguments); padding to the longest, if the file sets it."""
        if self.truncation is None and self.padding is None:  # each text alone: no batch-wide padding
            return [self.encode(t, allowed_special=allowed_special, disallowed_special=disallowed_special,
                                add_special_tokens=add_special_tokens) for t in texts]
        return [e.ids for e in self.encode_batch_plus(texts, allowed_special=allowed_special,
                                                      disallowed_special=disallowed_special,
                                                      add_special_tokens=add_special_tokens)]

    def encode_batch_plus(self, texts: Sequence[str], *, pairs: Sequence[str] | None = None,
                          allowed_special: Special = (), disallowed_special: Special = "all",
                          add_special_tokens: bool = True) -> list[Encoding]:
        """encode_plus for each text (and its pair), padded together as the file's padding says."""
        allowed, disallowed = self._allowed(allowed_special, disallowed_special)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_batch takes str texts, got {type(t).__name__}")
            second = None if pairs is None else self._encode_one(pairs[i], allowed, disallowed, raw=False)
            out.append(self._finish(self._encode_one(t, allowed, disallowed, raw=False), second, add_special_tokens))
        return self._pad(out)

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """The token strings of `encode(text)`."""
        return [self.id_to_token(i) for i in self.encode(text, **kwargs)]

    # --------------------------------------------------------------------------------------- decode
    def _tokens(self, ids: Iterable[int], skip_special_tokens: bool) -> list[str]:
        if hasattr(ids, "tolist"):  # a tensor or an array
            ids = ids.tolist()
        ids = ids if isinstance(ids, list) else list(ids)
        if skip_special_tokens and self._special_ids:
            ids = [i for i in ids if i not in self._special_ids]
        try:
            return list(map(self._id_to_str.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if getattr(i, "__hash__", None) is None or i not in self._id_to_str)
            raise ValueError(f"token id {bad!r} is not in the vocabulary (ids run 0..{self.vocab_size - 1}); "
                             "were these ids made by another tokenizer?") from None

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Token ids -> text. Raises ValueError for an id outside the vocabulary."""
        tokens = self._tokens(ids, skip_special_tokens)
        if self.decoder is None:
            return " ".join(tokens)  # what tokenizers does with no decoder
        return "".join(self.decoder(tokens))

    def decode_batch(self, batch: Iterable[Iterable[int]], **kwargs: Any) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in batch]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Token ids -> the exact bytes they stand for (byte-level models); invalid UTF-8 is kept."""
        if not self.pre_tokenizer.byte_level:
            raise ValueError("decode_bytes needs a byte-level model (pre_tokenizer ByteLevel)")
        out = bytearray()
        for t in self._tokens(ids, False):
            if all(c in CHAR_TO_BYTE for c in t):
                out.extend(CHAR_TO_BYTE[c] for c in t)
            else:
                out.extend(t.encode("utf-8", "surrogatepass"))
        return bytes(out)

    # ------------------------------------------------------------------------------------ chat, io
    def apply_chat_template(self, messages: Sequence[dict], *, add_generation_prompt: bool = False,
                            tokenize: bool = True, template: str | None = None, **kwargs: Any) -> list[int] | str:
        """Render `messages` ([{role, content}, ...]) with the tokenizer's Jinja chat template (or the
        default ChatML template) and, unless tokenize=False, encode it with special tokens allowed."""
        text = chat.render(self, messages, add_generation_prompt=add_generation_prompt, template=template, **kwargs)
        if not tokenize:
            return text
        return self.encode(text, allowed_special="all", add_special_tokens=False)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json file, a folder holding tokenizer.json (+ tokenizer_config.json), or the
        vocabulary inside a GGUF file (``x.gguf``: its tokenizer.ggml.* metadata)."""
        parts = gguf_vocab.read(path) if str(path).endswith(".gguf") else hf_format.read(path)
        return cls(**parts)

    from_pretrained = from_file

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json (atomically)."""
        hf_format.save_json(self, path)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json into `folder`, as HF folders have them."""
        hf_format.save_pretrained(self, folder)

    @classmethod
    def train(cls, data: Any, vocab_size: int, **kwargs: Any) -> Tokenizer:
        """Learn a byte-level BPE tokenizer; see `groundup.tokenizer.train.train` for the options."""
        return cls(**bpe_training.train(data, vocab_size, **kwargs))

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.model.merges)}, "
                f"special={self.special_tokens[:8]}{'...' if len(self.special_tokens) > 8 else ''})")


def _check_text(text: Any, pair: Any) -> None:
    if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
        bad = text if not isinstance(text, str) else pair
        raise TypeError(f"encode takes a str, got {type(bad).__name__}; use encode_bytes for raw bytes")


def _cut_before_mark(text: str, mark: str = "▁") -> list[str]:
    """'▁a▁▁b' -> ['▁a', '▁▁b']: cut before each mark that follows another character."""
    out, start = [], 0
    i = text.find(mark, 1)
    while i != -1:
        if text[i - 1] != mark:
            out.append(text[start:i])
            start = i
        i = text.find(mark, i + 1)
    out.append(text[start:])
    return out
