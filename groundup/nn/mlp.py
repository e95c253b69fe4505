"""Position-wise feed-forward networks: the classic two-layer MLP and the gated GLU family.

GLU variants (Shazeer, 2020, "GLU Variants Improve Transformer"): down(act(gate(x)) * up(x)), with
act = SiLU (SwiGLU, Llama/Mistral), GELU (GeGLU; its tanh approximation in T5 v1.1) or ReLU (ReGLU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from .gguf_linear import project
from .linear import Linear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "reglu": F.relu,
}


class MLP(nn.Module):
    """down(act(up(x))): [.., C] -> [.., d_ff] -> [.., C]."""

    def __init__(self, cfg: Config, d_ff: int | None = None) -> None:
        super().__init__()
        d_ff = d_ff or cfg.d_ff
        self.act = ACTIVATIONS[cfg.ffn]
        self.up_proj = Linear(cfg.d_model, d_ff, bias=cfg.mlp_bias)
        self.down_proj = Linear(d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with three matrices."""

    def __init__(self, cfg: Config, d_ff: int | None = None) -> None:
        super().__init__()
        d_ff = d_ff or cfg.d_ff
        self.act = ACTIVATIONS[cfg.ffn]
        self.gate_proj = Linear(cfg.d_model, d_ff, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.d_model, d_ff, bias=cfg.mlp_bias)
        self.down_proj = Linear(d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, (self.gate_proj, self.up_proj))
        return self.down_proj(self.act(gate) * up)


def make_ffn(cfg: Config, d_ff: int | None = None) -> nn.Module:
    """A dense FFN of the configured kind, d_ff wide (default cfg.d_ff)."""
    return GatedMLP(cfg, d_ff) if cfg.gated else MLP(cfg, d_ff)
