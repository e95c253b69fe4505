"""Normalisation layers: LayerNorm (Ba et al., 2016; bias optional) and RMSNorm (Zhang & Sennrich, 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 so low-precision activations do not lose the statistic."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # Normalise in fp32, cast back, then scale in the input dtype (the order Llama checkpoints expect).
        y = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)
        return y * self.weight


def make_norm(cfg: Config) -> nn.Module:
    """The norm layer the config asks for."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias)
