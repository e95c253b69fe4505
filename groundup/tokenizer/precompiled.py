"""The Precompiled normalizer: sentencepiece's compiled normalization rules (``nmt_nfkc`` and the like), as
found in T5, ALBERT, XLNet, mT5 and Marian tokenizer.json files converted by transformers.

The ``precompiled_charsmap`` blob (base64 in the JSON) is a little-endian u32 byte count, that many bytes
of a double-array trie (Aoe, 1989; the darts layout sentencepiece uses) over UTF-8 byte strings, then the
replacement strings, NUL-terminated, that the trie's leaves point into. Normalizing goes by extended
grapheme cluster, exactly as tokenizers (spm_precompiled) does it: a cluster of fewer than 6 bytes that
starts with a trie entry is replaced whole by the replacement of the *shortest* entry it starts with;
otherwise each character is replaced on its own (or kept). Odd, but it is what the reference does, and
what T5's ids depend on.
"""

from __future__ import annotations

import base64
import binascii
import struct

import regex

_GRAPHEMES = regex.compile(r"\X")


class Precompiled:
    """A compiled character map; ``__call__`` normalizes a string."""

    def __init__(self, charsmap_b64: str, where: str = "normalizer") -> None:
        try:
            blob = base64.b64decode(charsmap_b64, validate=True)
            (trie_bytes,) = struct.unpack_from("<I", blob, 0)
            units = struct.unpack_from(f"<{trie_bytes // 4}I", blob, 4)
            self.normalized = blob[4 + trie_bytes:]
        except (binascii.Error, struct.error, TypeError) as e:
            raise ValueError(f"{where}: precompiled_charsmap cannot be read ({e}): not a sentencepiece charsmap") \
                from None
        self.units = units
        self._cache: dict[str, str] = {}

    def _first_match(self, key: bytes) -> int | None:
        """The replacement offset of the shortest trie entry that ``key`` starts with (None: no entry)."""
        units, pos = self.units, 0
        unit = units[0]
        pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)  # offset of the root
        for c in key:
            if c == 0:
                return None
            pos ^= c
            if pos >= len(units):
                return None
            unit = units[pos]
            if unit & ((1 << 31) | 0xFF) != c:  # label
                return None
            pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
            if (unit >> 8) & 1:  # has a leaf: its value is the replacement's offset
                return units[pos] & ((1 << 31) - 1)
        return None

    def transform(self, chunk: str) -> str | None:
        """The replacement for a chunk, or None."""
        at = self._first_match(chunk.encode("utf-8", "surrogatepass"))
        if at is None:
            return None
        end = self.normalized.find(b"\0", at)
        return self.normalized[at:end if end >= 0 else len(self.normalized)].decode("utf-8", "replace")

    def _grapheme(self, g: str) -> str:
        if len(g.encode("utf-8", "surrogatepass")) < 6:
            t = self.transform(g)
            if t is not None:
                return t
        out = []
        for c in g:
            t = self.transform(c)
            out.append(c if t is None else t)
        return "".join(out)

    def __call__(self, s: str) -> str:
        cache, out = self._cache, []
        for g in _GRAPHEMES.findall(s):
            r = cache.get(g)
            if r is None:
                r = self._grapheme(g)
                if len(cache) < 200_000:
                    cache[g] = r
            out.append(r)
        return "".join(out)
