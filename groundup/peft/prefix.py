"""Prefix tuning: trainable keys and values in front of every layer's attention (Li & Liang, 2021,
"Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Each layer attends to n extra positions whose keys and values are parameters (for the n_kv_heads, so
GQA shrinks them like a KV cache). That is exactly a KV cache holding n positions before the input, so
here the prefix is put into the model's cache before the first token: training, generation, padding and
the cache logic are the ordinary ones, and real tokens take positions n, n + 1, ... as in the peft
library. The paper trains the prefix through a reparameterisation, a small MLP from an [n, d_model]
table to all layers' keys and values, which is more stable; ``projection=True`` does that, and the
saved adapter holds the MLP's output (as peft saves it).

Layout of the [n, layers x 2 x n_kv_heads x head_dim] table, as peft lays it out: for layer i, entry 2i
holds the keys and 2i + 1 the values. The keys are used as given (not rotated by RoPE).
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.kv_cache import DecoderCache


class PrefixTuning(nn.Module):
    """The trainable prefix of every layer: n positions of keys and values."""

    def __init__(self, cfg, num_virtual_tokens: int, *, projection: bool = False, hidden: int | None = None) -> None:
        super().__init__()
        if num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens={num_virtual_tokens} must be >= 1")
        self.n, self.layers, self.kv_heads, self.head_dim = num_virtual_tokens, cfg.n_layers, cfg.n_kv_heads, \
            cfg.head_dim
        width = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim
        self.projection = projection
        if projection:
            hidden = hidden or cfg.d_model
            self.embedding = nn.Embedding(num_virtual_tokens, cfg.d_model)
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, width)

    def table(self) -> torch.Tensor:
        """All layers' prefix keys and values, [n, layers x 2 x n_kv_heads x head_dim]."""
        w = self.embedding.weight
        return self.mlp(w) if self.projection else w

    def fill(self, cache: DecoderCache, batch: int, dtype: torch.dtype) -> None:
        """Append the prefix to every layer of an empty cache, for ``batch`` rows."""
        t = self.table().to(dtype).view(self.n, self.layers * 2, self.kv_heads, self.head_dim)
        t = t.permute(1, 2, 0, 3)  # [layers x 2, K, n, D]
        for i, layer in enumerate(cache.layers):
            k = t[2 * i].unsqueeze(0).expand(batch, -1, -1, -1)  # [B, K, n, D]
            v = t[2 * i + 1].unsqueeze(0).expand(batch, -1, -1, -1)
            layer.self_kv.append(k, v)


def apply_prefix_tuning(model: nn.Module, num_virtual_tokens: int = 20, *, projection: bool = False,
                        hidden: int | None = None) -> nn.Module:
    """Freeze ``model`` (a CausalLM) and give it a trainable prefix (in place): ``model.prefix_tuning``."""
    cfg = model.config
    if cfg.arch != "causal_lm":
        raise ValueError("prefix tuning is implemented for decoder-only models (CausalLM)")
    if cfg.sliding_window:
        raise ValueError("prefix tuning with sliding-window attention is not supported: the window would slide "
                         "past the prefix")
    if model.prefix_tuning is not None:
        raise ValueError("the model already has a prefix")
    w = model.embed.weight
    prefix = PrefixTuning(cfg, num_virtual_tokens, projection=projection, hidden=hidden).to(device=w.device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.prefix_tuning = prefix
    return model


def prefix_of(model: nn.Module) -> PrefixTuning | None:
    return model.prefix_tuning
