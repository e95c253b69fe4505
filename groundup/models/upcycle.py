"""Sparse upcycling (Komatsuzaki et al., 2022): a dense model becomes an MoE by copying each chosen layer's FFN
into every expert and adding a freshly initialised router; everything else keeps its trained weights.

With identical experts and weights that sum to one (router='topk_softmax') the upcycled model computes exactly
what the dense one did, whatever the router says; training then lets the experts diverge. Routers whose
weights do not sum to one (softmax_topk, switch) scale the FFN by the chosen probabilities at first.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..nn.moe import MoE
from . import build_model


def upcycled_config(cfg: Config, n_experts: int, top_k: int = 2, *, moe_layers: list[int] | None = None,
                    **moe: Any) -> Config:
    """The Config of ``cfg``'s model upcycled: experts of the dense FFN's width on ``moe_layers`` (all by
    default), and any other MoE field in ``moe``. Raises for a model that has experts already."""
    if cfg.n_experts:
        raise ValueError(f"the model already has n_experts={cfg.n_experts}; upcycling starts from a dense model")
    return cfg.replace(n_experts=n_experts, top_k=top_k, moe_layers=moe_layers, expert_d_ff=None, **moe)


def upcycle(model: torch.nn.Module, n_experts: int, top_k: int = 2, *, moe_layers: list[int] | None = None,
            router_std: float | None = None, **moe: Any) -> torch.nn.Module:
    """A new model: ``model``'s weights, with the FFN of each layer in ``moe_layers`` (default: all) copied into
    ``n_experts`` experts behind a new router (normal init, std ``router_std``, default the config's init_std).
    ``moe`` sets any other MoE field of Config (router, capacity_factor, router_z_loss_coef, family ...).
    The experts keep the dense FFN's width; the dense model must not be an MoE already."""
    cfg: Config = model.config
    new_cfg = upcycled_config(cfg, n_experts, top_k, moe_layers=moe_layers, **moe)
    with torch.device("meta"):
        sparse = build_model(new_cfg)
    dense_state = model.state_dict()
    state = {}
    for name, t in sparse.state_dict().items():
        if name in dense_state:
            state[name] = dense_state[name]
            continue
        # blocks.{i}.mlp.experts.{e}.<proj>.weight <- blocks.{i}.mlp.<proj>.weight
        prefix, sep, rest = name.partition(".mlp.experts.")
        if sep:
            state[name] = dense_state[f"{prefix}.mlp.{rest.split('.', 1)[1]}"].clone()
        elif ".mlp.router." in name or ".mlp.noise." in name:
            state[name] = torch.empty(t.shape, dtype=dense_state["embed.weight"].dtype,
                                      device=dense_state["embed.weight"].device).normal_(
                                          0.0, router_std if router_std is not None else cfg.impl.init_std)
            if name.endswith(".bias"):
                state[name].zero_()
        else:
            raise ValueError(f"upcycling cannot fill {name} from the dense model")
    sparse.load_state_dict(state, strict=True, assign=True)
    sparse.tie_weights()
    for m in sparse.modules():
        if isinstance(m, MoE):
            m.reset_usage()
    return sparse
