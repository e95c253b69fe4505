"""Serving (issue 21, in progress): the block manager of the paged KV cache (`blocks.py`). The engine
(continuous batching over the paged cache), the HTTP server and cascades build on it."""

from __future__ import annotations

from .blocks import BlockPool, chain_hashes

__all__ = ["BlockPool", "chain_hashes"]
