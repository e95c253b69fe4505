"""What a checkpoint family is: the Family record every layout fills in, and the helpers the layouts share.

Each family is data: how config.json maps to Config (and back), a list of (groundup module, HF module)
name templates ({i} = layer, {e} = expert), and the layout of a fused q/k/v matrix when the family has
one. The virtual module ``blocks.{i}.attn.qkv`` stands for q_proj/k_proj/v_proj stacked; the converter in
hf.py splits and joins it. The layouts live in decoders.py and encoders.py; registry.py holds them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config


class UnsupportedConfig(ValueError):
    """config.json asks for a variant groundup does not implement."""


@dataclass(frozen=True)
class Family:
    """How one HF model_type maps onto Config and groundup tensor names."""

    model_type: str
    architecture: str | Callable[[Config], str]  # the HF class name, or a function of the config
    to_config: Callable[[dict[str, Any]], dict[str, Any]]
    to_hf: Callable[[Config], dict[str, Any]]
    keys: Callable[[Config], list[tuple[str, str]]]
    # Fused qkv row layout: number of row groups; each group holds (H/g q, K/g k, K/g v) heads of D rows.
    qkv_groups: Callable[[Config], int] | None = None
    conv1d: bool = False  # GPT-2 stores linear weights as [in, out]
    ignored: tuple[str, ...] = ()  # HF tensors that carry nothing new (buffers, tied copies): regexes
    arch: str = "causal_lm"  # the Config.arch this layout holds
    exact: tuple[tuple[str, str], ...] = ()  # whole tensor names (groundup, HF), matched before the templates
    row_vectors: tuple[str, ...] = ()  # HF tensors stored [1, N] that groundup keeps as [N]
    # The FFN's gate and up projections stored as one matrix, gate rows first (Phi-3's gate_up_proj): the
    # virtual module ``blocks.{i}.mlp.gate_up`` stands for them and hf.py splits and joins it.
    fused_gate_up: bool = False
    # Config fields off by default (None) that this layout can write; config_to_hf refuses a config that sets
    # one the layout cannot hold (a soft-capped model saved as Llama would lose its caps silently)
    expresses: tuple[str, ...] = ()

    def architecture_of(self, cfg: Config) -> str:
        return self.architecture if isinstance(self.architecture, str) else self.architecture(cfg)


def first_of(hf: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if hf.get(n) is not None:
            return hf[n]
    return default


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UnsupportedConfig(message)


_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def activation_from_hf(name: str, field: str) -> str:
    require(name in _ACT_FROM_HF, f"{field}={name!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[name]


def activation_to_hf(cfg: Config) -> str:
    require(cfg.ffn in _ACT_TO_HF, f"ffn={cfg.ffn!r} cannot be written as family {cfg.family!r}")
    return _ACT_TO_HF[cfg.ffn]


def require_moe(cfg: Config, *, routers: tuple[str, ...], group: str = "batch", capacity: bool = False,
                shared: bool = False, pattern: bool = False, width: bool = False, bias: bool = False) -> None:
    """Refuse an MoE config whose forward a layout cannot hold: a router, groups or capacity it lacks, router
    noise weights or a bias it has no tensor for, a shared expert, a layer pattern, an expert width of its own.
    Training-only settings (the loss coefficients and scope, jitter) are not architecture: they pass."""
    family = cfg.family
    require(cfg.moe.router in routers, f"{family} layout routes with router in {routers}, not {cfg.moe.router!r}")
    require(capacity or (cfg.moe.capacity_factor is None and cfg.moe.eval_capacity_factor is None
                         and cfg.moe.expert_capacity is None),
            f"{family} layout has no expert capacity: capacity_factor / expert_capacity must be None")
    require(cfg.moe.router_group == group or (cfg.moe.capacity_factor is None and cfg.moe.expert_capacity is None),
            f"{family} layout shares capacity per {group}: router_group={cfg.moe.router_group!r}")
    require(not cfg.moe.router_noise, f"{family} layout has no noisy-gating weights: router_noise must be False")
    require(bias or not cfg.moe.router_bias, f"{family} layout has no router bias: router_bias must be False")
    require(shared or not cfg.moe.shared_expert_d_ff, f"{family} layout has no shared expert: shared_expert_d_ff=0")
    require(pattern or cfg.moe.moe_layers is None, f"{family} layout makes every layer MoE: moe_layers must be None")
    require(width or cfg.moe.expert_d_ff in (None, cfg.d_ff),
            f"{family} layout sizes experts with d_ff: expert_d_ff must be None")


def qkv_split(t: torch.Tensor, cfg: Config, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused q/k/v matrix -> q [H*D, ...], k and v [K*D, ...]. The fused rows are [groups, (H/g q heads,
    K/g k heads, K/g v heads), D]: groups=1 is q rows, then k, then v (Phi-3); Falcon and NeoX interleave."""
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    rest = t.shape[1:]
    g = t.reshape(groups, (H + 2 * K) // groups, D, *rest)  # [g, (H + 2K) / g, D, ...]
    q, k, v = g.split([H // groups, K // groups, K // groups], dim=1)
    return q.reshape(H * D, *rest), k.reshape(K * D, *rest), v.reshape(K * D, *rest)


def qkv_join(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: Config, groups: int) -> torch.Tensor:
    """The inverse of qkv_split."""
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    rest = q.shape[1:]
    parts = [x.reshape(groups, n // groups, D, *rest) for x, n in ((q, H), (k, K), (v, K))]
    return torch.cat(parts, dim=1).reshape((H + 2 * K) * D, *rest)
