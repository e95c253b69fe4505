"""Serving: the engine (`engine.py`: continuous batching with chunked prefill over a paged KV
cache, preemption by recompute, per-request sampling, logprobs and adapters), its block manager
(`blocks.py`; the blocks' keys and values are nn/kv_cache.py's PagedPool), request settings (`params.py`)
and the adapters one server mixes in a batch (`adapters.py`). The HTTP server and cascades build on them."""

from __future__ import annotations

from .adapters import Adapters
from .blocks import BlockPool, chain_hashes
from .engine import Engine, Seq
from .params import ParamError, SamplingParams

__all__ = ["Adapters", "BlockPool", "Engine", "ParamError", "SamplingParams", "Seq", "chain_hashes"]
