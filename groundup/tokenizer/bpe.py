"""Byte-pair encoding (Sennrich et al., 2016, arXiv:1508.07909): applying learned merges to a word.

A word is split into symbols (characters, or byte tokens when a character is not in the vocabulary and
byte fallback is on), then the pair with the lowest merge rank is merged, leftmost first, one merge at a
time, until no adjacent pair has a merge. This is the rule HF `tokenizers` applies, so both give the same
ids for every word and every merges file, including files whose merges are not in training order.

Byte-level BPE (GPT-2, Radford et al., 2019) first maps each UTF-8 byte to a printable character
(`BYTE_TO_CHAR`), so a vocabulary of 256 base symbols covers every string and no text is ever unknown.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

import regex


def _byte_chars() -> list[str]:
    """The printable character that stands for each byte value, in byte order.

    Bytes that are printable Latin-1 characters stand for themselves; the 68 others (controls, space,
    the soft hyphen ...) take code points 256, 257, ... in byte order, so no symbol is whitespace or
    invisible and a vocabulary file stays readable.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS: list[str] = _byte_chars()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_CHARS)}
# str.translate table from a latin-1 decoded byte string to byte-level characters.
BYTE_TO_CHAR: dict[int, str] = dict(enumerate(BYTE_CHARS))


def to_byte_level(data: bytes) -> str:
    """Raw bytes -> the byte-level string a byte-level BPE vocabulary is written in."""
    return data.decode("latin-1").translate(BYTE_TO_CHAR)


def byte_token(b: int) -> str:
    """The vocabulary entry of a fallback byte, SentencePiece style: 10 -> '<0x0A>'."""
    return f"<0x{b:02X}>"


# Words longer than this merge through a heap (O(n log n)) instead of rescanning all pairs each merge.
_HEAP_ABOVE = 48


class BPE:
    """A BPE vocabulary with its merges, and the per-word encoder.

    `vocab` maps token strings to ids; `merges` lists (left, right) pairs, earliest = highest priority.
    The options mirror the HF `tokenizers` BPE model so a tokenizer.json round-trips: `unk_token` stands
    for characters outside the vocabulary (`fuse_unk` joins runs of them), `byte_fallback` writes such
    characters as <0x..> byte tokens instead (Llama-2, Mistral), `continuing_subword_prefix` /
    `end_of_word_suffix` mark non-initial / final pieces, and `ignore_merges` returns a word whole when
    it is itself in the vocabulary (Llama-3).
    """

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]], *, unk_token: str | None = None,
                 byte_fallback: bool = False, fuse_unk: bool = False, continuing_subword_prefix: str | None = None,
                 end_of_word_suffix: str | None = None, ignore_merges: bool = False):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.unk_token = unk_token
        self.byte_fallback = byte_fallback
        self.fuse_unk = fuse_unk
        self.continuing_subword_prefix = continuing_subword_prefix
        self.end_of_word_suffix = end_of_word_suffix
        self.ignore_merges = ignore_merges
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        if unk_token is not None and unk_token not in self.vocab:
            raise ValueError(f"model.unk_token {unk_token!r} is not in model.vocab: add it or set unk_token to null")
        # (left id, right id) -> (rank, merged id). A later duplicate of a pair overrides an earlier one,
        # as in tokenizers.
        self.merge_map: dict[tuple[int, int], tuple[int, int]] = {}
        prefix_len = len(continuing_subword_prefix or "")
        vocab, merge_map = self.vocab, self.merge_map  # locals: this loop runs once per merge (~50k) at load
        for rank, (a, b) in enumerate(self.merges):
            merged = a + (b[prefix_len:] if prefix_len and b.startswith(continuing_subword_prefix) else b)
            try:
                merge_map[(vocab[a], vocab[b])] = (rank, vocab[merged])
            except KeyError:
                part = next(p for p in (a, b, merged) if p not in vocab)
                raise ValueError(f"model.merges[{rank}] {a!r} + {b!r}: {part!r} is not in model.vocab") from None
        self._byte_ids = [self.vocab.get(byte_token(b)) for b in range(256)] if byte_fallback else None

    # ------------------------------------------------------------------ per word
    def symbols(self, word: str) -> list[int]:
        """A word's starting symbols: one id per character, bytes or <unk> for characters not in vocab."""
        vocab, out = self.vocab, []
        prefix, suffix = self.continuing_subword_prefix, self.end_of_word_suffix
        unk_open = False  # the last symbol is an <unk> that fuse_unk may extend
        last = len(word) - 1
        for i, ch in enumerate(word):
            s = ch
            if prefix and i > 0:
                s = prefix + s
            if suffix and i == last:
                s = s + suffix
            tid = vocab.get(s)
            if tid is not None:
                out.append(tid)
                unk_open = False
                continue
            if self._byte_ids is not None:
                ids = [self._byte_ids[b] for b in s.encode("utf-8", "surrogatepass")]
                if None not in ids:
                    out.extend(ids)
                    unk_open = False
                    continue
            if self.unk_token is not None:
                if not (self.fuse_unk and unk_open):
                    out.append(vocab[self.unk_token])
                unk_open = True
            # With no unk token a character outside the vocabulary is dropped, as tokenizers does.
        return out

    def encode_word(self, word: str) -> tuple[int, ...]:
        """The ids of one pre-tokenized word (uncached; `Tokenizer` caches words)."""
        if self.ignore_merges and word in self.vocab:
            return (self.vocab[word],)
        return tuple(self.merge(self.symbols(word)))

    def merge(self, ids: list[int]) -> list[int]:
        """Apply merges to a symbol list: lowest rank first, leftmost first among equal ranks."""
        if len(ids) > _HEAP_ABOVE:
            return _merge_heap(ids, self.merge_map)
        get = self.merge_map.get
        # ranks[i] is the merge of (ids[i], ids[i+1]) or None; only neighbours of a merge change.
        ranks = [get(p) for p in itertools.pairwise(ids)]
        while True:
            best, pos = None, -1
            for i, m in enumerate(ranks):
                if m is not None and (best is None or m[0] < best[0]):
                    best, pos = m, i
            if best is None:
                return ids
            ids[pos : pos + 2] = [best[1]]
            del ranks[pos]
            if pos < len(ranks):
                ranks[pos] = get((ids[pos], ids[pos + 1]))
            if pos > 0:
                ranks[pos - 1] = get((ids[pos - 1], ids[pos]))


def _merge_heap(ids: list[int], merge_map: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """`BPE.merge` for long words: a linked list of symbols and a heap of (rank, position) candidates.

    A candidate is stale when its left symbol was absorbed or its pair changed; it is then skipped.
    """
    n = len(ids)
    sym = list(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    get = merge_map.get
    heap = [(m[0], i, m[1]) for i in range(n - 1) if (m := get((sym[i], sym[i + 1]))) is not None]
    heapq.heapify(heap)
    while heap:
        _rank, i, new = heapq.heappop(heap)
        j = nxt[i]
        if not alive[i] or j >= n:
            continue
        m = get((sym[i], sym[j]))
        if m is None or m[1] != new:
            continue
        sym[i] = new
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        p = prv[i]
        if p >= 0 and (m := get((sym[p], sym[i]))) is not None:
            heapq.heappush(heap, (m[0], p, m[1]))
        k = nxt[i]
        if k < n and (m := get((sym[i], sym[k]))) is not None:
            heapq.heappush(heap, (m[0], i, m[1]))
    return [s for s, a in zip(sym, alive, strict=False) if a]


def merges_cross(model: BPE, mark: str) -> bool:
    """Whether some token BPE can produce holds `mark` after a different character.

    When none does, a whole-text SentencePiece-style encoding (no pre-tokenizer) can be cut before every
    `mark` that follows another character without changing a single id, which makes it cacheable.
    """
    tokens: Iterable[str] = (a + b for a, b in model.merges)
    if model.ignore_merges:  # a whole word found in the vocabulary is taken as it is
        tokens = itertools.chain(tokens, model.vocab)
    return any(mark in s[1:] and regex.search(f"[^{mark}]{mark}", s) for s in tokens)
