"""A weighted mixture of sources, packed into blocks for causal LM training.

Like the Pile and LLaMA data tables (the course's "67% web, 4.5% code ..."), each source gets a sampling
weight: every training sequence is drawn from source s with probability weight_s / sum(weights), so the
share of tokens the trainer sees from s matches its weight whatever the sources' sizes. A small source is
then repeated (more epochs), a big one only partly read; `epochs(tokens)` reports it. Within a source,
blocks are visited in a fresh random order each epoch.

Sampling is a pure function of (seed, draw counters): `state_dict()` is a few integers, so a resumed run
sees exactly the batches the uninterrupted run would have seen. With data parallelism every rank draws
the same global batch and keeps its own slice (rank r takes rows r, r + world, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .sources import Source
from .tokens import TokenData, pack, tokenize_source


class Mixture:
    """Sources -> token caches -> train/validation blocks -> batches (x, y) of shape [B, block_size]."""

    def __init__(self, sources: Sequence[Source], tokenizer, block_size: int, *, cache_dir: str | Path,
                 val_fraction: float = 0.01, seed: int = 0, eos_id: int | None = None, show_progress: bool = False):
        if not sources:
            raise ValueError("the data mixture has no source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}: give them distinct names")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        eos = eos_id if eos_id is not None else tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token to put between documents: set one (e.g. train it "
                             "with eos_token='<|endoftext|>') or pass eos_id")
        self.sources, self.block_size, self.seed = list(sources), block_size, seed
        self.data: list[TokenData] = [tokenize_source(s, tokenizer, cache_dir, eos, show_progress) for s in sources]
        self.train_blocks, self.val_blocks = [], []
        for s, d in zip(self.sources, self.data, strict=False):
            val = d.split_mask(val_fraction)
            train = pack(d.stream(~val), block_size)
            if len(train) == 0:
                raise ValueError(f"source {s.name!r} has {int(d.starts[-1]):,} tokens, fewer than one training "
                                 f"block of {block_size + 1}: add text or lower the block size")
            self.train_blocks.append(train)
            self.val_blocks.append(pack(d.stream(val), block_size))
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.weights = w / w.sum()
        self.draws = [0] * len(self.sources)  # blocks taken from each source so far
        self.batches = 0  # global batches drawn so far
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    # ----------------------------------------------------------------------------------- sampling
    def _block(self, s: int, k: int) -> np.ndarray:
        """The k-th block drawn from source s: epoch k // n in that epoch's own shuffled order."""
        n = len(self.train_blocks[s])
        epoch = k // n
        cached = self._perm.get(s)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, s, epoch]).permutation(n))
            self._perm[s] = cached
        return self.train_blocks[s][cached[1][k % n]]

    def next_sources(self, batch_size: int) -> np.ndarray:
        """Which source each row of the next global batch comes from (advances nothing)."""
        rng = np.random.default_rng([self.seed, 1 << 20, self.batches])
        return rng.choice(len(self.sources), size=batch_size, p=self.weights)

    def next_batch(self, batch_size: int, *, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The next global batch of `batch_size` rows; this rank's rows as (inputs, targets) [B / world, T]."""
        if batch_size % world:
            raise ValueError(f"the global batch {batch_size} does not split over {world} processes")
        rows = []
        for i, s in enumerate(self.next_sources(batch_size)):
            block = self._block(int(s), self.draws[s])
            self.draws[s] += 1
            if i % world == rank:
                rows.append(block)
        self.batches += 1
        b = torch.from_numpy(np.stack(rows).astype(np.int64))
        return b[:, :-1], b[:, 1:]

    def state_dict(self) -> dict:
        return {"draws": list(self.draws), "batches": self.batches, "seed": self.seed,
                "sources": [s.name for s in self.sources], "block_size": self.block_size}

    def load_state_dict(self, state: dict) -> None:
        if state["sources"] != [s.name for s in self.sources] or state["block_size"] != self.block_size:
            raise ValueError(f"the checkpoint's data state is for sources {state['sources']} with block size "
                             f"{state['block_size']}, not {[s.name for s in self.sources]} / {self.block_size}")
        self.draws, self.batches, self.seed = list(state["draws"]), int(state["batches"]), int(state["seed"])

    # ------------------------------------------------------------------------------------ figures
    def epochs(self, tokens: float) -> dict[str, float]:
        """How many passes over each source's training tokens `tokens` trained tokens make."""
        per_block = self.block_size
        return {s.name: tokens * w / (len(b) * per_block)
                for s, w, b in zip(self.sources, self.weights, self.train_blocks, strict=False)}

    def table(self) -> list[dict]:
        """One row per source: documents, train/val tokens, weight (the course's data-mixture table)."""
        return [{"source": s.name, "documents": d.n_docs, "train_tokens": len(tb) * self.block_size,
                 "val_tokens": len(vb) * self.block_size, "weight": float(w)}
                for s, d, tb, vb, w in zip(self.sources, self.data, self.train_blocks, self.val_blocks,
                                           self.weights, strict=False)]

    def val_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Fixed validation batches: every source's validation blocks in order, sources interleaved by
        weight (each contributes in proportion to its weight, at least one block when it has any)."""
        total = sum(len(v) for v in self.val_blocks)
        if total == 0:
            return
        budget = total if max_batches is None else min(total, max_batches * batch_size)
        take = [min(len(v), max(1, round(budget * w))) if len(v) else 0
                for v, w in zip(self.val_blocks, self.weights, strict=False)]
        blocks = np.concatenate([v[:k] for v, k in zip(self.val_blocks, take, strict=False) if k])
        for i in range(0, len(blocks), batch_size):
            b = torch.from_numpy(blocks[i:i + batch_size].astype(np.int64))
            yield b[:, :-1], b[:, 1:]
