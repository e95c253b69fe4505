"""Training a byte-level BPE tokenizer (Sennrich et al., 2016; GPT-2's byte-level variant, Radford et al., 2019).

1. Count words: each text (each line of a file) is cut by the pre-tokenization regex; only the counts of
   distinct words are kept, so a corpus larger than memory streams through.
2. Start from 256 byte symbols and repeatedly merge the most frequent adjacent pair. Pair counts are
   updated incrementally: a merge touches only the words that contain the pair (an index from pair to
   words), and a heap with lazy re-insertion finds the next best pair.

Ties and ids follow HF `tokenizers`' BpeTrainer exactly (special tokens first, then the byte alphabet by
code point, then merges; the most frequent pair wins, the smallest pair of ids among equals), so both
learn the same vocabulary and merges from the same texts, which the tests check.
"""

from __future__ import annotations

import glob
import heapq
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import regex

from .bpe import BPE, BYTE_CHARS, to_byte_level
from .components import PATTERNS, Decoder, PreTokenizer
from .encoding import AddedToken


def _sources(data: Any) -> tuple[list[Path], Iterable[str]]:
    """Files and texts in `data`: a path or glob (str/Path), an iterable of Paths (a list, Path.glob ...),
    or an iterable of texts (streamed: a generator is never materialized)."""
    if isinstance(data, (str, os.PathLike)):
        spec = str(data)
        files = sorted(glob.glob(spec, recursive=True)) if not Path(spec).is_file() else [spec]
        files = [f for f in files if Path(f).is_file()]
        if not files:
            raise FileNotFoundError(
                f"no file matches {spec[:80]!r}; a str is read as a path or glob pattern; to train on the string "
                "itself pass a list of texts, e.g. Tokenizer.train([text], ...)")
        return [Path(f) for f in files], []
    it = iter(data)
    first = next(it, None)
    if first is None:
        raise ValueError("the training data is empty")
    items = itertools.chain([first], it)
    if isinstance(first, os.PathLike):
        paths = [Path(p) for p in items]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"training files not found: {missing[:5]}")
        return paths, []
    return [], items


def _file_lines(files: list[Path], progress: Any) -> Iterator[str]:
    """Lines with their newline, undecodable bytes kept as surrogate escapes (PEP 383)."""
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                if progress is not None:
                    progress.update(len(line))
                yield line.decode("utf-8", "surrogateescape")


def count_words(data: Any, pattern: str, show_progress: bool = False) -> Counter[str]:
    """Distinct pre-tokenized words of the corpus with their counts, as byte-level strings."""
    files, texts = _sources(data)
    split = regex.compile(pattern).findall
    progress = None
    if show_progress:
        from tqdm import tqdm

        if files:
            progress = tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="count words")
        else:
            texts = tqdm(texts, unit=" texts", desc="count words")
    counts: Counter[str] = Counter()
    for source, errors in ((_file_lines(files, progress), "surrogateescape"), (texts, "surrogatepass")):
        raw: Counter[str] = Counter()
        batch: list[str] = []
        for i, text in enumerate(source):
            if not isinstance(text, str):
                raise TypeError(f"training item {i} is {type(text).__name__}, expected str text (or pass Paths)")
            batch += split(text)
            if len(batch) > 1 << 20:
                raw.update(batch)
                batch = []
        raw.update(batch)
        for word, n in raw.items():
            counts[to_byte_level(word.encode("utf-8", errors))] += n
    if progress is not None:
        progress.close()
    return counts


def _merge_word(word: list[int], a: int, b: int, new: int, max_len: int, lens: list[int]) -> list[tuple]:
    """Merge every (a, b) in `word` left to right; return the pair count changes [(pair, +-1)]."""
    changes = []
    i = 0
    while True:
        try:
            i = word.index(a, i)
        except ValueError:
            return changes
        if i + 1 < len(word) and word[i + 1] == b:
            new_len = lens[new]
            if i > 0:
                prev = word[i - 1]
                changes.append(((prev, a), -1))
                if lens[prev] + new_len < max_len:
                    changes.append(((prev, new), 1))
            word[i : i + 2] = [new]
            if i + 1 < len(word):
                nxt = word[i + 1]
                changes.append(((b, nxt), -1))
                if lens[nxt] + new_len < max_len:
                    changes.append(((new, nxt), 1))
        i += 1


def _pair_heap(words: list[list[int]], counts: list[int]) -> tuple[dict[tuple[int, int], int], list]:
    """Every adjacent pair's count over the counted words, and a max-heap of (-count, pair, order, the
    words holding it): the merge loop pops the most frequent pair, lowest pair first on ties."""
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for i, (w, n) in enumerate(zip(words, counts, strict=False)):
        for pair in itertools.pairwise(w):
            pair_counts[pair] = pair_counts.get(pair, 0) + n
            where.setdefault(pair, set()).add(i)
    heap = [(-pair_counts[pair], pair, k, pos) for k, (pair, pos) in enumerate(
        (pair, pos) for pair, pos in where.items() if pair_counts[pair] > 0)]
    heapq.heapify(heap)
    return pair_counts, heap


def learn_merges(word_counts: dict[str, int], vocab_size: int, special_tokens: list[str], min_frequency: int = 0,
                 max_token_length: int | None = None, alphabet: Iterable[str] = BYTE_CHARS,
                 show_progress: bool = False) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE merge loop on counted words -> (vocab, merges in rank order)."""
    id_to_word: list[str] = []
    word_to_id: dict[str, int] = {}

    def add(token: str) -> int:
        if token not in word_to_id:
            word_to_id[token] = len(id_to_word)
            id_to_word.append(token)
        return word_to_id[token]

    for t in special_tokens:
        add(t)
    for c in sorted(set(alphabet) | {c for w in word_counts for c in w}):
        add(c)
    max_len = max_token_length if max_token_length is not None else 1 << 62
    lens = [len(t) for t in id_to_word]
    words = [[word_to_id[c] for c in w] for w in word_counts]
    counts = list(word_counts.values())

    pair_counts, heap = _pair_heap(words, counts)
    seq, where = len(heap), {}  # seq: insertion order, keeps heap entries comparable when count and pair tie

    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=max(0, vocab_size - len(id_to_word)), desc="merges")
    merges: list[tuple[tuple[int, int], int]] = []
    while len(word_to_id) < vocab_size and heap:
        neg, pair, _, pos = heapq.heappop(heap)
        count = pair_counts[pair]
        if -neg != count:  # stale: its count changed since it was pushed
            heapq.heappush(heap, (-count, pair, seq, pos))
            seq += 1
            continue
        if count < 1 or min_frequency > count:
            break
        a, b = pair
        before = len(id_to_word)
        new = add(id_to_word[a] + id_to_word[b])
        if len(id_to_word) > before:
            lens.append(len(id_to_word[new]))
            if progress is not None:
                progress.update(1)
        merges.append((pair, new))
        for i in pos:
            n = counts[i]
            for p, delta in _merge_word(words[i], a, b, new, max_len, lens):
                pair_counts[p] = pair_counts.get(p, 0) + delta * n
                if delta > 0:
                    s = where.get(p)
                    if s is None:
                        where[p] = {i}
                    else:
                        s.add(i)
        for p, s in where.items():
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p, seq, s))
                seq += 1
        where = {}
    if progress is not None:
        progress.close()
    # A pair merged twice keeps its last rank, as tokenizers does when it builds the model.
    last = {pair: r for r, (pair, _) in enumerate(merges)}
    ordered = [(id_to_word[a], id_to_word[b]) for (a, b), r in sorted(last.items(), key=lambda kv: kv[1])]
    return word_to_id, ordered


def train(data: Any, vocab_size: int, *, special_tokens: Iterable[str] = (), min_frequency: int = 0,
          pattern: str = "gpt2", max_token_length: int | None = None, bos_token: str | None = None,
          eos_token: str | None = None, pad_token: str | None = None, unk_token: str | None = None,
          chat_template: str | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Learn a byte-level BPE tokenizer: the parts Tokenizer is built from (``Tokenizer.train`` builds it).

    data: a file path or glob (str or Path), a list of Paths, or an iterable of texts (each text is
        pre-tokenized as a unit; a file is read line by line, as tokenizers does). Invalid UTF-8 in files
        is kept as raw bytes.
    vocab_size: total ids: special tokens + 256 bytes + merges. Training stops earlier when no pair is
        left or the best pair is rarer than `min_frequency`.
    special_tokens: control tokens, ids 0.. in the given order; bos/eos/pad/unk_token name roles for
        tokenizer_config.json (and are added to special_tokens when missing).
    pattern: "gpt2", "gpt4" (cl100k, also Llama-3), "digits" (GPT-2's with one token per digit, as
        Llama splits numbers) or a regular expression of your own.
    """
    specials = list(dict.fromkeys([*special_tokens, *(t for t in (bos_token, eos_token, pad_token, unk_token)
                                                        if t is not None)]))
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is too small: the 256 byte symbols and {len(specials)} special "
                         f"tokens need at least {256 + len(specials)}")
    regex_text = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(regex_text)
    except regex.error as e:
        raise ValueError(f"pattern {pattern!r} is neither 'gpt2', 'gpt4', 'digits' nor a valid regular expression: "
                         f"{e}") from None
    counts = count_words(data, regex_text, show_progress)
    vocab, merges = learn_merges(counts, vocab_size, specials, min_frequency, max_token_length,
                                 show_progress=show_progress)
    model = BPE(vocab, merges)
    if pattern == "gpt2":
        pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex_text}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    dec = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    added = [AddedToken(vocab[t], t, special=True) for t in specials]
    config = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token),
                                ("unk_token", unk_token)) if v is not None}
    return dict(model=model, pre_tokenizer=PreTokenizer(pre), decoder=Decoder(dec, "decoder"), added_tokens=added,
                config=config, chat_template=chat_template)
