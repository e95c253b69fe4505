"""Serving (issue 21, in progress): the block manager of the paged KV cache (`blocks.py`; the blocks' keys and
values are nn/kv_cache.py's PagedPool, read and written by a batch through PagedKVCache). The engine
(continuous batching over the paged cache), the HTTP server and cascades build on them."""

from __future__ import annotations

from .blocks import BlockPool, chain_hashes

__all__ = ["BlockPool", "chain_hashes"]
