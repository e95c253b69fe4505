"""Key/value caches for incremental decoding.

Self-attention keys and values grow by one step per generated token; cross-attention keys and values are
computed once from the encoder output and reused at every step (Vaswani et al., 2017, decoding). Beam
search reorders both along the batch axis when beams are re-ranked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import Config


@dataclass
class KVCache:
    """Keys and values [B, K, S, D] of one attention layer (None until the first step fills them)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Positions seen so far."""
        return 0 if self.k is None else self.k.shape[2]

    @property
    def kept(self) -> int:
        """Positions whose keys are still held: the keys append() returns start with these (then the new)."""
        return self.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add new steps [B, K, t, D]; returns everything cached so far [B, K, S + t, D]."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` [B'] (beam search re-ranking)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding drops rejected drafts)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {length}")
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


class _BufferedKVCache(KVCache):
    """Keys and values in buffers [B, K, slots, D] allocated on the first append; `n` positions seen."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots, self.n = slots, 0
        self.k_buf: torch.Tensor | None = None
        self.v_buf: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (0 before the first step)."""
        return 0 if self.k_buf is None else self.k_buf.nbytes + self.v_buf.nbytes

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.k_buf is None:
            B, K, _, D = k.shape
            self.k_buf = k.new_empty(B, K, self.slots, D)
            self.v_buf = v.new_empty(B, K, self.slots, D)

    def reorder(self, index: torch.Tensor) -> None:
        if self.k_buf is not None:
            self.k_buf, self.v_buf = self.k_buf.index_select(0, index), self.v_buf.index_select(0, index)


class StaticKVCache(_BufferedKVCache):
    """Keys and values in buffers [B, K, capacity, D] allocated on the first step: appending writes in
    place (no per-step copy of everything cached so far, no allocation) and returns views of the filled
    part. Only the n_kv_heads are stored, so GQA/MQA shrink it by n_heads / n_kv_heads. A step past the
    capacity doubles the buffers (one copy), so the capacity is a first guess, not a limit: generation
    that asks for 10**8 tokens holds only the positions it has produced."""

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        self._allocate(k, v)
        if self.n + t > self.slots:
            self._grow(max(2 * self.slots, self.n + t))
        self.k_buf[:, :, self.n : self.n + t] = k
        self.v_buf[:, :, self.n : self.n + t] = v
        self.n += t
        self.k, self.v = self.k_buf[:, :, : self.n], self.v_buf[:, :, : self.n]  # [B, K, n, D] views
        return self.k, self.v

    def _grow(self, slots: int) -> None:
        B, K, _, D = self.k_buf.shape
        k_new, v_new = self.k_buf.new_empty(B, K, slots, D), self.v_buf.new_empty(B, K, slots, D)
        k_new[:, :, : self.n], v_new[:, :, : self.n] = self.k_buf[:, :, : self.n], self.v_buf[:, :, : self.n]
        self.k_buf, self.v_buf, self.slots = k_new, v_new, slots

    def reorder(self, index: torch.Tensor) -> None:
        super().reorder(index)
        if self.k_buf is not None:
            self.k, self.v = self.k_buf[:, :, : self.n], self.v_buf[:, :, : self.n]

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.n:
            raise ValueError(f"cannot crop a cache of {self.n} positions to {length}")
        self.n = length  # the buffers stay; later appends overwrite the dropped slots
        if self.k_buf is not None:
            self.k, self.v = self.k_buf[:, :, : self.n], self.v_buf[:, :, : self.n]


class FixedKVCache(KVCache):
    """A StaticKVCache's buffers [B, K, slots, D] seen through one fixed shape, for a compiled decode step: no
    Python number changes from step to step, so torch.compile traces the step once.

    append() writes the new position at ``slot`` (a [1] long tensor the decode loop advances in place) and
    returns the whole buffers. To the model the cache always holds ``slots - 1`` positions and the new token
    comes last, so causality hides nothing; which slots are real is the attention mask's business ([B, slots],
    zero for unwritten slots and left padding), and positions come as position_ids. Attention does not depend
    on the order of the keys (RoPE is in the cached keys; ALiBi's bias moves by a constant per query, which the
    softmax removes), so the result equals the growing cache's."""

    def __init__(self, k_buf: torch.Tensor, v_buf: torch.Tensor, slot: torch.Tensor) -> None:
        super().__init__(k_buf, v_buf)
        self.slot = slot

    @property
    def length(self) -> int:
        return self.k.shape[2] - 1

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, self.slot, k)  # k [B, K, 1, D] into slot
        self.v.index_copy_(2, self.slot, v)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        raise NotImplementedError("a fixed cache serves the compiled decode step only")

    crop = reorder


class RollingKVCache(_BufferedKVCache):
    """Sliding-window attention's cache: a ring of `window` positions, so memory stays bounded however long
    the generation (Beltagy et al., 2020; Jiang et al., 2023, Mistral's rolling buffer cache).

    append() returns the kept keys in order, oldest first, followed by the new ones: position-wise the
    same layout as a full cache cut to its last `kept` positions, so the causal + window mask applies
    with the query offset `kept` (positions that fell out of the window are gone, and the mask would
    have hidden them anyway). RoPE is applied before caching, so keys carry their positions with them.
    """

    @property
    def kept(self) -> int:
        return min(self.n, self.slots)

    def crop(self, length: int) -> None:
        raise NotImplementedError("a rolling cache has overwritten old positions and cannot be cropped; use a "
                                  "static cache (DecoderCache.static) where positions must be taken back")

    def _ordered(self, buf: torch.Tensor) -> torch.Tensor:
        if self.n <= self.slots:
            return buf[:, :, : self.n]
        start = self.n % self.slots  # the oldest kept position's slot
        return torch.cat((buf[:, :, start:], buf[:, :, :start]), dim=2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        self._allocate(k, v)
        if self.n:
            out_k = torch.cat((self._ordered(self.k_buf), k), dim=2)  # [B, K, kept + t, D]
            out_v = torch.cat((self._ordered(self.v_buf), v), dim=2)
        else:
            out_k, out_v = k, v
        m = min(t, self.slots)  # only the newest `window` positions are kept
        slots = torch.arange(self.n + t - m, self.n + t, device=k.device) % self.slots
        self.k_buf.index_copy_(2, slots, k[:, :, t - m:])
        self.v_buf.index_copy_(2, slots, v[:, :, t - m:])
        self.n += t
        return out_k, out_v


class PagedPool:
    """One layer's keys and values in fixed-size blocks, [n_blocks + 2, block_size, K, D] each (allocated on the
    first write; slot-major, so the pool is one flat [slots, K, D] table of token slots); block ``n_blocks``
    stays zero and is read for padding, block ``n_blocks + 1`` takes the writes of padding tokens and is never
    read. Which block holds which sequence's
    tokens is the block manager's business (serve/blocks.py); a forward reads and writes through PagedKVCache."""

    def __init__(self, n_blocks: int, block_size: int) -> None:
        self.n_blocks, self.block_size = n_blocks, block_size
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def _allocate(self, k: torch.Tensor) -> None:
        shape = (self.n_blocks + 2, self.block_size, k.shape[1], k.shape[3])
        self.k = k.new_zeros(shape)
        self.v = k.new_zeros(shape)


class PagedBatch:
    """The slots one forward of a batch writes and reads, shared by every layer's PagedKVCache: row r has
    ``lens[r]`` positions cached in the blocks of ``tables[r]`` (block ids of a PagedPool layout). Rows are
    right-aligned (left-padded) to the longest, as left-padded prompts are, so every row's new queries sit
    at the same places; the caller's attention mask [B, width + T] hides the padding and its position ids
    count each row's own tokens. ``new[r]`` of a row's T new tokens are real (default: all), the first
    T - new[r] padding (prefill chunks of different lengths in one forward): they write to the scratch block
    and are read back as the zero block, so the mask [0] * (width - lens[r]) + [1] * lens[r] +
    [0] * (T - new[r]) + [1] * new[r] hides them."""

    def __init__(self, tables: list[list[int]], lens: list[int], n_blocks: int, block_size: int,
                 new: list[int] | None = None) -> None:
        self.tables, self.lens, self.block_size, self.new = tables, list(lens), block_size, new
        self.width = max(lens, default=0)
        self.pad = n_blocks * block_size  # the first slot of the zero block
        self.scratch = (n_blocks + 1) * block_size  # padding tokens write here
        self._index: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def key_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        """The attention mask [B, width + T] of this layout (1 = a real key), or None when no row is padded."""
        new = self.new or [T] * len(self.lens)
        if all(n == self.width for n in self.lens) and all(c == T for c in new):
            return None
        return torch.tensor([[0] * (self.width - n) + [1] * n + [0] * (T - c) + [1] * c
                             for n, c in zip(self.lens, new, strict=True)], device=device)

    def _slots(self, table: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def index(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots written [B * T], slots read [B * (width + T)]), built once per forward, not per layer."""
        key = (T, device)
        if key not in self._index:
            write, read = [], []
            for r, (table, n) in enumerate(zip(self.tables, self.lens, strict=True)):
                c = T if self.new is None else self.new[r]
                write += [self.scratch] * (T - c) + self._slots(table, n, n + c)
                read += [self.pad] * (self.width - n) + self._slots(table, 0, n) + [self.pad] * (T - c) + \
                    self._slots(table, n, n + c)
            self._index[key] = (torch.tensor(write, device=device), torch.tensor(read, device=device))
        return self._index[key]


class PagedKVCache(KVCache):
    """One layer's view of a PagedPool for one forward of a PagedBatch: ``append`` writes each row's new keys
    into its blocks and returns every row's keys gathered from them, padding read from the zero block."""

    def __init__(self, pool: PagedPool, batch: PagedBatch) -> None:
        super().__init__()
        self.pool, self.batch = pool, batch

    @property
    def length(self) -> int:
        return self.batch.width

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, (B, K, T, D) = self.pool, k.shape
        if pool.k is None:
            pool._allocate(k)
        write, read = self.batch.index(T, k.device)
        flat_k, flat_v = pool.k.view(-1, K, D), pool.v.view(-1, K, D)  # [slots, K, D], views of the pool
        flat_k.index_copy_(0, write, k.transpose(1, 2).reshape(-1, K, D))  # [B * T, K, D] in row order
        flat_v.index_copy_(0, write, v.transpose(1, 2).reshape(-1, K, D))
        S = self.batch.width + T
        keys = flat_k.index_select(0, read).view(B, S, K, D).transpose(1, 2)  # [B, K, S, D]
        vals = flat_v.index_select(0, read).view(B, S, K, D).transpose(1, 2)
        return keys, vals


@dataclass
class BlockCache:
    """The caches of one decoder block: its self-attention and, in a seq2seq decoder, its cross-attention."""

    self_kv: KVCache = field(default_factory=KVCache)
    cross_kv: KVCache = field(default_factory=KVCache)


@dataclass
class DecoderCache:
    """Per-layer caches of a decoder stack; ``length`` is the number of decoded positions cached."""

    layers: list[BlockCache]

    @classmethod
    def empty(cls, n_layers: int) -> DecoderCache:
        return cls([BlockCache() for _ in range(n_layers)])

    @classmethod
    def static(cls, n_layers: int, capacity: int) -> DecoderCache:
        """Self-attention caches preallocated for `capacity` positions, grown past it (see StaticKVCache)."""
        return cls([BlockCache(self_kv=StaticKVCache(capacity)) for _ in range(n_layers)])

    @classmethod
    def rolling(cls, n_layers: int, window: int) -> DecoderCache:
        """Ring-buffer self-attention caches for sliding-window attention (see RollingKVCache)."""
        return cls([BlockCache(self_kv=RollingKVCache(window)) for _ in range(n_layers)])

    @classmethod
    def per_layer(cls, windows: list[int | None], capacity: int) -> DecoderCache:
        """A ring of its window for each windowed layer whose window is below ``capacity``, a static cache of
        ``capacity`` for the others (Gemma 2/3: local layers keep `window` positions, global ones all)."""
        return cls([BlockCache(self_kv=RollingKVCache(w) if w is not None and w < capacity
                               else StaticKVCache(capacity)) for w in windows])

    def fixed(self, slot: torch.Tensor) -> DecoderCache:
        """The same buffers as FixedKVCache layers writing at ``slot`` (see there); every layer must be a
        StaticKVCache that has seen the prompt (a ring's slots move, so a windowed layer cannot be fixed)."""
        layers = []
        for i, layer in enumerate(self.layers):
            kv = layer.self_kv
            if type(kv) is not StaticKVCache or kv.k_buf is None:
                raise ValueError(f"layer {i}: a fixed-shape decode step needs a filled static cache, not "
                                 f"{type(kv).__name__} (sliding-window layers keep a ring)")
            # unwritten slots are masked, but a masked probability 0 times a NaN left in empty memory is NaN
            kv.k_buf[:, :, kv.n:].zero_()
            kv.v_buf[:, :, kv.n:].zero_()
            layers.append(BlockCache(self_kv=FixedKVCache(kv.k_buf, kv.v_buf, slot), cross_kv=layer.cross_kv))
        return DecoderCache(layers)

    @property
    def nbytes(self) -> int:
        """Bytes held by all the keys and values."""
        total = 0
        for layer in self.layers:
            for kv in (layer.self_kv, layer.cross_kv):
                if isinstance(kv, _BufferedKVCache):
                    total += kv.nbytes
                elif kv.k is not None:
                    total += kv.k.nbytes + kv.v.nbytes
        return total

    @property
    def length(self) -> int:
        return self.layers[0].self_kv.length if self.layers else 0

    def crop(self, length: int) -> None:
        """Keep the first ``length`` self-attention positions of every layer."""
        for layer in self.layers:
            layer.self_kv.crop(length)

    def reorder(self, index: torch.Tensor, *, cross: bool = True) -> None:
        """Keep batch rows ``index``. ``cross=False`` leaves the cross-attention cache alone: right when
        rows are only permuted among copies of the same source (beam search), whose encoder keys/values
        are identical, so the per-step copy of [B, K, S, D] per layer is saved."""
        for layer in self.layers:
            layer.self_kv.reorder(index)
            if cross:
                layer.cross_kv.reorder(index)


def cache_capacity(cfg: Config, wanted: int) -> int:
    """Positions to preallocate for a generation that may reach ``wanted``: no more than the model's
    context (its max_seq_len for ALiBi). Going further is allowed for relative positions and grows the
    cache (StaticKVCache doubles), so asking for 10**8 new tokens does not allocate 10**8 slots up front."""
    bound = cfg.context_length if cfg.context_length != float("inf") else cfg.max_seq_len
    return max(1, min(wanted, int(bound)))
