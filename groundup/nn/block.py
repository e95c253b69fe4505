"""The transformer block: attention, optional cross-attention, and FFN (dense or MoE), wired four ways.

    pre  (GPT-2, Llama, T5):     h = x + attn(n1(x));   [h = h + cross(nc(h), m)];   y = h + ffn(n2(h))
    post (Vaswani et al., 2017; BERT, Marian):
                                 h = n1(x + attn(x));   [h = nc(h + cross(h, m))];   y = n2(h + ffn(h))
    sublayer (OLMo 2):           h = x + n1(attn(x));   [h = h + nc(cross(h, m))];   y = h + n2(ffn(h))
    sandwich (Gemma 2/3):        h = x + p1(attn(n1(x)));                          y = h + p2(ffn(n2(h)))
    parallel (GPT-J, NeoX, Falcon): y = x + attn(n1(x)) + ffn(n2(x)), n2 = n1 when shared_norm.

Cross-attention (the bracketed step) exists only in a seq2seq decoder; m is the encoder output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from .attention import Attention, MaskSpec
from .kv_cache import BlockCache
from .mlp import make_ffn
from .moe import MoE, RouterStats
from .norm import make_norm

Rope = tuple[torch.Tensor, torch.Tensor]


class Block(nn.Module):
    """One layer; forward returns (hidden [B, T, C], the MoE layer's RouterStats or None, attention weights or
    None). ``moe`` makes the FFN routed experts (Config.is_moe_layer says which layers are)."""

    def __init__(self, cfg: Config, *, cross: bool = False, moe: bool = False) -> None:
        super().__init__()
        self.placement, self.parallel = cfg.norm_placement, cfg.residual == "parallel"
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.cross_attn_norm = make_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, kv_dim=cfg.cross_attention_dim) if cross else None
        self.mlp_norm = None if cfg.shared_norm else make_norm(cfg)
        self.mlp = MoE(cfg) if moe else make_ffn(cfg)
        sandwich = cfg.norm_placement == "sandwich"  # a second norm on each sublayer's output
        self.post_attn_norm = make_norm(cfg) if sandwich else None
        self.post_mlp_norm = make_norm(cfg) if sandwich else None

    def _ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats | None]:
        if isinstance(self.mlp, MoE):
            return self.mlp(x)
        return self.mlp(x), None

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(self, x: torch.Tensor, mask: MaskSpec, *, rope: Rope | None = None,
                memory: torch.Tensor | None = None, memory_mask: MaskSpec | None = None,
                cache: BlockCache | None = None, return_weights: bool = False
                ) -> tuple[torch.Tensor, RouterStats | None, torch.Tensor | None]:
        """x [B, T, C]; ``memory`` [B, S, C] and ``memory_mask`` feed the cross-attention of a decoder block."""
        if (memory is None) != (self.cross_attn is None):
            raise ValueError("a decoder block with cross-attention needs the encoder output (memory), and "
                             "only such a block takes one")
        self_kv = cache.self_kv if cache is not None else None
        cross_kv = cache.cross_kv if cache is not None else None
        if self.placement == "post":
            a, w = self.attn(x, mask, rope=rope, cache=self_kv, return_weights=return_weights)
            h = self.attn_norm(x + self._drop(a))
            if self.cross_attn is not None:
                c, _ = self.cross_attn(h, memory_mask, memory=memory, cache=cross_kv)
                h = self.cross_attn_norm(h + self._drop(c))
            f, aux = self._ffn(h)
            return self.mlp_norm(h + self._drop(f)), aux, w
        if self.placement == "sublayer":  # OLMo 2: each sublayer's output is normalised before the residual add
            a, w = self.attn(x, mask, rope=rope, cache=self_kv, return_weights=return_weights)
            h = x + self._drop(self.attn_norm(a))
            if self.cross_attn is not None:
                c, _ = self.cross_attn(h, memory_mask, memory=memory, cache=cross_kv)
                h = h + self._drop(self.cross_attn_norm(c))
            f, aux = self._ffn(h)
            return h + self._drop(self.mlp_norm(f)), aux, w
        n1 = self.attn_norm(x)
        a, w = self.attn(n1, mask, rope=rope, cache=self_kv, return_weights=return_weights)
        if self.placement == "sandwich":
            h = x + self._drop(self.post_attn_norm(a))
            f, aux = self._ffn(self.mlp_norm(h))
            return h + self._drop(self.post_mlp_norm(f)), aux, w
        if self.parallel:
            f, aux = self._ffn(n1 if self.mlp_norm is None else self.mlp_norm(x))
            return x + self._drop(a) + self._drop(f), aux, w
        h = x + self._drop(a)
        if self.cross_attn is not None:
            c, _ = self.cross_attn(self.cross_attn_norm(h), memory_mask, memory=memory, cache=cross_kv)
            h = h + self._drop(c)
        f, aux = self._ffn(self.mlp_norm(h))
        return h + self._drop(f), aux, w
