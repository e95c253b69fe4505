"""Normalisation layers: LayerNorm (Ba et al., 2016; bias optional) and RMSNorm (Zhang & Sennrich, 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + weight), computed in fp32 so low-precision activations do not lose the statistic.

    ``offset`` 1 is Gemma's convention: the checkpoint stores the scale minus one (zeros at init)."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0) -> None:
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight + self.offset if self.offset else self.weight
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        if self.offset:  # Gemma scales in fp32 too, then casts
            return (F.rms_norm(x.float(), (x.shape[-1],), None, self.eps) * w.float()).to(x.dtype)
        # Normalise in fp32, cast back, then scale in the input dtype (the order Llama checkpoints expect).
        y = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)
        return y * w


def make_norm(cfg: Config) -> nn.Module:
    """The norm layer the config asks for."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_weight_offset)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias)
