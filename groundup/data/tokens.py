"""Tokenize once, read many times: a binary token file per (source, tokenizer), and packing into blocks.

`tokenize_source` encodes every document of a source, writes the ids with EOS after each document to
`<cache>/<name>-<key>.bin` (uint16 when the vocabulary fits, else uint32) and the document start
offsets to `...idx.npy`. The key hashes the source's files (paths, sizes, mtimes), its options and the
tokenizer, so a change to any of them builds a new file and an unchanged corpus is never re-tokenized.
Both files are written under temporary names and renamed, so an interrupted build leaves no cache.

Documents are split into train and validation by a hash of their index: deterministic, independent of
the block size, and no document is in both. Each split's stream is cut into blocks of block_size + 1
tokens (inputs and next-token targets) with stride block_size; EOS separates documents inside a block.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..tokenizer.hf_format import to_json
from ..utils.files import atomic_file
from .sources import Source


def tokenizer_key(tokenizer) -> str:
    return hashlib.sha256(json.dumps(to_json(tokenizer), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TokenData:
    """The token ids of one source (documents back to back, EOS after each) and where documents start."""

    name: str
    tokens: np.ndarray  # [n_tokens] uint16/uint32, memory-mapped
    starts: np.ndarray  # [n_docs + 1] int64: document d is tokens[starts[d]:starts[d + 1]]

    @property
    def n_docs(self) -> int:
        return len(self.starts) - 1

    def split_mask(self, val_fraction: float) -> np.ndarray:
        """[n_docs] bool, True for validation documents. At least one document on each side when there
        are two or more."""
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        buckets = np.array([zlib.crc32(f"{self.name}/{d}".encode()) % 100_000 for d in range(self.n_docs)])
        val = buckets < val_fraction * 100_000
        if val_fraction > 0 and self.n_docs >= 2:
            if not val.any():
                val[int(np.argmin(buckets))] = True
            if val.all():
                val[int(np.argmax(buckets))] = False
        return val

    def stream(self, docs: np.ndarray) -> np.ndarray:
        """The tokens of the selected documents (bool mask), back to back, as one int64 array."""
        ranges = [(self.starts[d], self.starts[d + 1]) for d in np.flatnonzero(docs)]
        if not ranges:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(self.tokens[a:b], dtype=np.int64) for a, b in ranges])


def tokenize_source(source: Source, tokenizer, cache_dir: str | Path, eos_id: int,
                    show_progress: bool = False) -> TokenData:
    """Load the cached token file of (source, tokenizer), building it first when missing."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{source.fingerprint()}/{tokenizer_key(tokenizer)}/{eos_id}".encode()).hexdigest()[:16]
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    bin_path, idx_path = cache / f"{source.name}-{key}.bin", cache / f"{source.name}-{key}.idx.npy"
    if not (bin_path.is_file() and idx_path.is_file()):
        _build(source, tokenizer, eos_id, dtype, bin_path, idx_path, show_progress)
    starts = np.load(idx_path, allow_pickle=False)
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if starts[-1] else np.zeros(0, dtype)
    return TokenData(source.name, tokens, starts)


def _build(source: Source, tokenizer, eos_id: int, dtype, bin_path: Path, idx_path: Path,
           show_progress: bool) -> None:
    docs = source.documents()
    if show_progress:
        from tqdm import tqdm

        docs = tqdm(docs, desc=f"tokenize {source.name}", unit=" docs")
    starts = [0]

    def write_tokens(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for doc in docs:
                ids = tokenizer.encode(doc, disallowed_special=(), add_special_tokens=False)
                ids.append(eos_id)
                np.asarray(ids, dtype=dtype).tofile(f)
                starts.append(starts[-1] + len(ids))

    # The index goes last: its presence is what marks a complete cache.
    atomic_file(bin_path, write_tokens)
    atomic_file(idx_path, lambda tmp: np.save(tmp, np.asarray(starts, dtype=np.int64)))


def pack(stream: np.ndarray, block_size: int) -> np.ndarray:
    """[n_blocks, block_size + 1] windows of the stream with stride block_size (a view, no copy)."""
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    n = (len(stream) - 1) // block_size
    if n <= 0:
        return np.zeros((0, block_size + 1), dtype=stream.dtype)
    return np.lib.stride_tricks.as_strided(stream, shape=(n, block_size + 1),
                                           strides=(stream.strides[0] * block_size, stream.strides[0]),
                                           writeable=False)
