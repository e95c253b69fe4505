"""The transformer block: attention and FFN (dense or MoE) wired pre-norm, post-norm or in parallel.

    pre  (GPT-2, Llama):        h = x + attn(n1(x));        y = h + ffn(n2(h))
    post (Vaswani et al., 2017): h = n1(x + attn(x));        y = n2(h + ffn(h))
    parallel (GPT-J, NeoX, Falcon): y = x + attn(n1(x)) + ffn(n2(x)), n2 = n1 when shared_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from .attention import Attention, MaskSpec
from .mlp import make_ffn
from .moe import MoE
from .norm import make_norm


class Block(nn.Module):
    """One layer; forward returns (hidden [B, T, C], MoE balance loss or None, attention weights or None)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.placement, self.parallel = cfg.norm_placement, cfg.residual == "parallel"
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = None if cfg.shared_norm else make_norm(cfg)
        self.mlp = MoE(cfg) if cfg.n_experts else make_ffn(cfg)

    def _ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.mlp, MoE):
            return self.mlp(x)
        return self.mlp(x), None

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(self, x: torch.Tensor, mask: MaskSpec, *, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.placement == "post":
            a, w = self.attn(x, mask, rope=rope, return_weights=return_weights)
            h = self.attn_norm(x + self._drop(a))
            f, aux = self._ffn(h)
            return self.mlp_norm(h + self._drop(f)), aux, w
        n1 = self.attn_norm(x)
        a, w = self.attn(n1, mask, rope=rope, return_weights=return_weights)
        if self.parallel:
            f, aux = self._ffn(n1 if self.mlp_norm is None else self.mlp_norm(x))
            return x + self._drop(a) + self._drop(f), aux, w
        h = x + self._drop(a)
        f, aux = self._ffn(self.mlp_norm(h))
        return h + self._drop(f), aux, w
