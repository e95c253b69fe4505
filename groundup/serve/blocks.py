"""The block manager of a paged KV cache (Kwon et al., 2023, "Efficient Memory Management for Large Language
Model Serving with PagedAttention"): the cache is a pool of fixed-size blocks, each sequence owns a block
table (its logical blocks -> physical block ids), and blocks are handed out one at a time as sequences grow,
so memory is committed per ``block_size`` tokens, not per maximum length.

Prefix caching: a full block is named by a hash chained over every token up to its end, so two prompts that
share a system prompt share its blocks (reference counts), and a finished sequence's blocks stay findable
until the pool needs them back (least recently freed first). The last prompt token is always computed again,
since its logits start the answer.

This module decides which block holds what; the tensors live in the engine's cache. Nothing here reads a
tensor, so it is tested on its own (tests/serve/test_blocks.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


def next_hash(previous: int, block: Sequence[int]) -> int:
    """The chained hash of a full block: its tokens and the hash of every block before it."""
    return hash((previous, tuple(block)))


def chain_hashes(tokens: Sequence[int], block_size: int, salt: int = 0) -> list[int]:
    """One hash per full block of ``tokens``, each over the tokens of every block up to it and ``salt`` (what
    else the keys depend on: a LoRA adapter changes them, so its blocks are never another's)."""
    out, h = [], salt
    for start in range(0, len(tokens) - block_size + 1, block_size):
        h = next_hash(h, tokens[start: start + block_size])
        out.append(h)
    return out


@dataclass
class _Table:
    """What one sequence holds: its physical blocks and the tokens they cover."""

    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # every token written or about to be
    hashes: list[int] = field(default_factory=list)  # chained hashes of the leading blocks known to the cache
    salt: int = 0


class BlockPool:
    """``n_blocks`` blocks of ``block_size`` token slots, shared by the sequences of a batch."""

    def __init__(self, n_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"n_blocks={n_blocks} and block_size={block_size} must be >= 1")
        self.n_blocks, self.block_size, self.prefix_caching = n_blocks, block_size, prefix_caching
        self.ref = [0] * n_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(n_blocks))  # oldest first
        self.cached: dict[int, int] = {}  # chained hash -> block holding those tokens
        self.hash_of: dict[int, int] = {}  # block -> its hash, while it is in `cached`
        self.tables: dict[object, _Table] = {}
        self.hits = 0  # prompt blocks found in the prefix cache, so far

    # -- what is left --------------------------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return len(self.free)

    @property
    def used_blocks(self) -> int:
        return self.n_blocks - len(self.free)

    def blocks_needed(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _cached_prefix(self, prompt: Sequence[int], use_cache: bool, salt: int) -> tuple[list[int], list[int]]:
        """(hashes, blocks) of the prompt's leading full blocks already in the cache (never the block with
        its last token, whose logits start the answer); hashing stops at the first miss."""
        hashes: list[int] = []
        blocks: list[int] = []
        if not (self.prefix_caching and use_cache):
            return hashes, blocks
        h, bs = salt, self.block_size
        for start in range(0, len(prompt) - bs, bs):  # full blocks of prompt[:-1]
            h = next_hash(h, prompt[start: start + bs])
            b = self.cached.get(h)
            if b is None:
                break
            hashes.append(h)
            blocks.append(b)
        return hashes, blocks

    def _fits(self, hit: list[int], n_tokens: int) -> bool:
        idle_hits = sum(1 for b in hit if self.ref[b] == 0)  # shared blocks that sit in the free list
        return self.blocks_needed(n_tokens) - len(hit) <= len(self.free) - idle_hits

    def can_allocate(self, prompt: Sequence[int], reserve: int = 0, *, use_cache: bool = True, salt: int = 0) -> bool:
        """Whether ``prompt`` (plus ``reserve`` more tokens) fits now, counting the blocks it would share."""
        return self._fits(self._cached_prefix(prompt, use_cache, salt)[1], len(prompt) + reserve)

    # -- a sequence's life ----------------------------------------------------------------------------------
    def allocate(self, seq: object, prompt: Sequence[int], *, reserve: int = 0, use_cache: bool = True,
                 salt: int = 0) -> int:
        """Give ``seq`` the blocks of its prompt; returns how many leading tokens are already cached (their
        keys and values need no computing; none with ``use_cache=False``, for a caller that needs every
        position's logits). Blocks are shared only between sequences of the same ``salt`` (see chain_hashes).
        Raises MemoryError, changing nothing, when the pool cannot hold the prompt plus ``reserve`` tokens."""
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already holds blocks")
        if not prompt:
            raise ValueError("a prompt needs at least one token")
        hashes, hit = self._cached_prefix(prompt, use_cache, salt)
        if not self._fits(hit, len(prompt) + reserve):
            raise MemoryError(f"{self.blocks_needed(len(prompt) + reserve)} blocks needed, {len(self.free)} free")
        table = _Table(tokens=list(prompt), hashes=hashes, salt=salt)
        for b in hit:
            self._take(b)
            table.blocks.append(b)
        self.hits += len(hit)
        while len(table.blocks) < self.blocks_needed(len(prompt)):
            table.blocks.append(self._take(None))
        self.tables[seq] = table
        return len(hit) * self.block_size

    def append(self, seq: object, token: int) -> bool:
        """Room for one more token of ``seq`` (a new block when its last one is full); False when the pool
        has no block left: the caller preempts a sequence and tries again."""
        table = self.tables[seq]
        if len(table.tokens) == len(table.blocks) * self.block_size:
            if not self.free:
                return False
            table.blocks.append(self._take(None))
        table.tokens.append(token)
        return True

    def commit(self, seq: object, computed: int) -> None:
        """The first ``computed`` tokens of ``seq`` now have their keys and values in the cache: register its
        full blocks among them in the prefix cache, so that later prompts can share them."""
        table = self.tables[seq]
        if not self.prefix_caching:
            return
        bs = self.block_size
        for i in range(len(table.hashes), computed // bs):  # only the blocks filled since the last commit
            h = next_hash(table.hashes[-1] if table.hashes else table.salt, table.tokens[i * bs: (i + 1) * bs])
            table.hashes.append(h)
            if h not in self.cached:
                self.cached[h], self.hash_of[table.blocks[i]] = table.blocks[i], h

    def release(self, seq: object) -> None:
        """``seq`` is finished or preempted: its blocks return to the pool (still findable by their hash
        until reused)."""
        table = self.tables.pop(seq)
        for b in reversed(table.blocks):  # the tail first: a prefix stays cached longest
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None

    def block_table(self, seq: object) -> list[int]:
        return list(self.tables[seq].blocks)

    # -- internals -------------------------------------------------------------------------------------------
    def _take(self, block: int | None) -> int:
        """Reference ``block`` (a cached one) or the least recently freed block, forgetting its old hash."""
        if block is None:
            block = next(iter(self.free))
            old = self.hash_of.pop(block, None)
            if old is not None:
                del self.cached[old]
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1
        return block
