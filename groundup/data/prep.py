"""Preparing fine-tuning data: augmentation, PII redaction, blocklist filtering, duplicate removal.

Everything here is a pure function of its inputs and a seed, so a prepared dataset can be rebuilt exactly.
Filters return what they removed alongside what they kept: nothing disappears unreported.

- Augmentation (Wei & Zou, 2019, "EDA"): synonym replacement from a user-given map, random word deletion,
  random swaps of word positions, and typo noise (a neighbouring-key substitution, a dropped, doubled or
  transposed letter).
- PII redaction: e-mail addresses and phone numbers become [EMAIL] and [PHONE].
- Blocklist: records containing a blocked word (whole word, any case) are dropped.
- Duplicates: exact (after normalising case and whitespace) and near duplicates by MinHash over word
  shingles with LSH banding (Broder, 1997; Leskovec et al., "Mining of Massive Datasets", ch. 3), each
  candidate pair confirmed by its estimated Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------- augmentation
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours(c: str) -> str:
    for row in _KEYBOARD:
        i = row.find(c.lower())
        if i >= 0:
            return row[max(0, i - 1): i] + row[i + 1: i + 2]
    return ""


def synonym_replace(words: list[str], synonyms: dict[str, Sequence[str]], p: float, rng: random.Random) -> list[str]:
    """Each word with an entry in ``synonyms`` (looked up in lower case) is replaced with probability p."""
    out = []
    for w in words:
        options = synonyms.get(w.lower())
        out.append(rng.choice(list(options)) if options and rng.random() < p else w)
    return out


def random_delete(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability p (one word always stays)."""
    kept = [w for w in words if rng.random() >= p]
    return kept or ([rng.choice(words)] if words else [])


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Swap the positions of two random words, n times."""
    words = list(words)
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def typo_noise(text: str, p: float, rng: random.Random) -> str:
    """With probability p per letter: a neighbouring key, a dropped letter, a doubled letter, or the letter
    swapped with the next one."""
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < p:
            kind = rng.randrange(4)
            near = _neighbours(c)
            if kind == 0 and near:
                sub = rng.choice(near)
                out.append(sub.upper() if c.isupper() else sub)
            elif kind == 1:
                pass  # dropped
            elif kind == 2:
                out.extend([c, c])
            elif i + 1 < len(chars):
                out.extend([chars[i + 1], c])
                i += 1
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def augment(text: str, *, seed: int, synonyms: dict[str, Sequence[str]] | None = None, p_synonym: float = 0.1,
            p_delete: float = 0.0, swaps: int = 0, p_typo: float = 0.0) -> str:
    """One augmented copy of ``text`` (whitespace-separated words; the operations in the order above),
    the same for the same seed."""
    for name, p in (("p_synonym", p_synonym), ("p_delete", p_delete), ("p_typo", p_typo)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name}={p} must be in [0, 1]")
    rng = random.Random(seed)
    words = text.split()
    if synonyms:
        words = synonym_replace(words, synonyms, p_synonym, rng)
    if p_delete:
        words = random_delete(words, p_delete, rng)
    if swaps:
        words = random_swap(words, swaps, rng)
    out = " ".join(words)
    return typo_noise(out, p_typo, rng) if p_typo else out


# ------------------------------------------------------------------------------------------- redaction
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A phone number: optional +country code, then 9-15 digits in groups split by spaces, dots, dashes or a
# parenthesised area code; bare runs of digits (years, amounts, ids) are left alone unless they carry a
# leading + or separators in phone-like places.
PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?"  # country code
                   r"(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"  # area code
                   r"\d{2,4}[\s.-]\d{3,4}(?!\w|\.\d)")  # number, not running on into more digits


def redact_pii(text: str) -> str:
    """E-mail addresses -> [EMAIL], phone numbers -> [PHONE]."""
    text = EMAIL.sub("[EMAIL]", text)
    return PHONE.sub(lambda m: "[PHONE]" if sum(ch.isdigit() for ch in m.group()) >= 9 else m.group(), text)


# ------------------------------------------------------------------------------------------- filtering
def blocklist_filter(texts: Sequence[str], blocked: Iterable[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """(indices kept, [(index dropped, the blocked word it contains)]); words match whole, in any case."""
    words = sorted({w.strip().lower() for w in blocked if w.strip()})
    if not words:
        return list(range(len(texts))), []
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    kept, dropped = [], []
    for i, t in enumerate(texts):
        m = pattern.search(t)
        if m:
            dropped.append((i, m.group(1).lower()))
        else:
            kept.append(i)
    return kept, dropped


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def dedup_exact(texts: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """(indices kept: the first of each group, [(dropped index, the kept index it repeats)]), comparing
    texts with case and whitespace normalised."""
    first: dict[str, int] = {}
    kept, dropped = [], []
    for i, t in enumerate(texts):
        key = hashlib.sha1(_normal(t).encode()).hexdigest()
        if key in first:
            dropped.append((i, first[key]))
        else:
            first[key] = i
            kept.append(i)
    return kept, dropped


_PRIME = (1 << 31) - 1  # products of two numbers below it fit in 64 bits


def minhash(text: str, *, num_perm: int = 128, shingle: int = 3, seed: int = 0) -> np.ndarray:
    """MinHash signature [num_perm] of the set of ``shingle``-word shingles (of the normalised text)."""
    words = _normal(text).split()
    grams = {" ".join(words[i: i + shingle]) for i in range(max(1, len(words) - shingle + 1))}
    h = np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") % _PRIME
                  for g in grams], dtype=np.uint64)  # [S]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
    return ((a[:, None] * h[None, :] + b[:, None]) % _PRIME).min(axis=1)  # [num_perm, S] -> [num_perm]


def dedup_near(texts: Sequence[str], *, threshold: float = 0.8, num_perm: int = 128, bands: int = 32,
               shingle: int = 3, seed: int = 0) -> tuple[list[int], list[tuple[int, int, float]]]:
    """(indices kept, [(dropped index, the kept index it nearly repeats, estimated Jaccard)]). Texts whose
    signatures agree in all rows of some LSH band are candidates; a candidate whose estimated Jaccard
    similarity with a kept text reaches ``threshold`` is dropped (the earlier text stays)."""
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    rows = num_perm // bands
    sigs = [minhash(t, num_perm=num_perm, shingle=shingle, seed=seed) for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = {}
    kept, dropped = [], []
    for i, sig in enumerate(sigs):
        keys = [(band, sig[band * rows: (band + 1) * rows].tobytes()) for band in range(bands)]
        candidates = sorted({j for k in keys for j in buckets.get(k, [])})
        best = max(((j, float((sigs[j] == sig).mean())) for j in candidates), key=lambda x: x[1], default=None)
        if best is not None and best[1] >= threshold:
            dropped.append((i, best[0], best[1]))
            continue
        kept.append(i)
        for k in keys:
            buckets.setdefault(k, []).append(i)
    return kept, dropped
