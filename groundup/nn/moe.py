"""Sparse mixture of experts on the FFN (Shazeer et al., 2017; Switch, Fedus et al., 2021; Mixtral, 2024).

A linear router scores every token against E experts; each token is processed by its top-k experts and
their outputs are mixed with the routing weights. Two routers:
    topk_softmax  pick the k largest logits, softmax over those k (Mixtral; weights sum to 1);
    softmax_topk  softmax over all E, then keep the k largest probabilities as they are (Switch, GShard).
The load-balancing loss (Switch Transformer, eq. 4) is E * sum_e f_e * P_e, where f_e is the fraction of
routing slots sent to expert e and P_e its mean router probability; it equals k when routing is uniform.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .linear import Linear
from .mlp import make_ffn


class MoE(nn.Module):
    """Top-k routed experts; forward returns (output, load-balancing loss)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.router_kind = cfg.n_experts, cfg.top_k, cfg.router
        self.router = Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(make_ffn(cfg) for _ in range(cfg.n_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, C] -> (weights [N, k], expert ids [N, k], router probabilities over all experts [N, E])."""
        logits = self.router(x).float()  # routing decisions in fp32: ties and near-ties matter
        probs = torch.softmax(logits, dim=-1)
        top_vals, top_idx = torch.topk(logits, self.top_k, dim=-1)
        if self.router_kind == "topk_softmax":
            weights = torch.softmax(top_vals, dim=-1)
        else:
            weights = probs.gather(-1, top_idx)
        return weights, top_idx, probs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, C], N = B*T
        weights, idx, probs = self.route(flat)
        out = torch.zeros_like(flat)
        # Group the N*k routing slots by expert: one gather, one expert call and one scatter-add each.
        slot_expert = idx.reshape(-1)  # [N*k]
        order = torch.argsort(slot_expert, stable=True)
        counts = torch.bincount(slot_expert, minlength=self.n_experts).tolist()
        token_of_slot = order // self.top_k
        slot_weight = weights.reshape(-1)[order].to(x.dtype)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            tokens = token_of_slot[start:start + n]
            y = self.experts[e](flat[tokens]) * slot_weight[start:start + n, None]
            out.index_add_(0, tokens, y)
            start += n
        return out.view(shape), self.balance_loss(idx, probs)

    def balance_loss(self, idx: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """E * sum_e f_e P_e with f_e counted over all k routing slots of each token."""
        n_tokens = idx.shape[0]
        f = torch.bincount(idx.reshape(-1), minlength=self.n_experts).to(probs.dtype) / n_tokens  # [E]
        p = probs.mean(dim=0)  # [E]
        return self.n_experts * (f * p).sum()
