"""Sparse mixture of experts on the FFN (Shazeer et al., 2017; GShard, Lepikhin et al., 2020; Switch, Fedus et
al., 2021; ST-MoE, Zoph et al., 2022; expert choice, Zhou et al., 2022; DeepSeekMoE, Dai et al., 2024; Mixtral).

A linear router scores every token against E experts (in fp32: near-ties decide routes). Routers:
    topk_softmax   each token picks the k largest logits; softmax over those k (Mixtral; weights sum to 1)
    softmax_topk   softmax over all E, keep the k largest probabilities as they are (GShard, Qwen2-MoE)
    switch         softmax_topk with k = 1 (Switch Transformer)
    expert_choice  each expert picks its top-capacity tokens of the group by probability; a token may get
                   any number of experts, each expert gets exactly its capacity (perfect balance, no drops)
Capacity (token-choice routers): within a group (one sequence, or the whole batch) expert e takes at most
ceil(k x tokens per group x capacity factor / E) routing slots. Slots compete in priority order: every
token's first choice before any second choice, and within a rank sequence order or, with
router_priority='score', the most confident token first (batch-prioritised routing, Riquelme et al., 2021).
A slot past the capacity is dropped: the token gets nothing from that expert and the residual carries it.

Dispatch sorts the kept slots by expert once, gathers their tokens into one [M, C] matrix and runs each
expert on its contiguous rows (one GEMM per expert and matrix; no loop over tokens); the outputs are weighted
and put back by index. The losses (returned as RouterStats, reduced by ``router_loss``):
    balance  alpha E sum_e f_e P_e, f_e the fraction of routing choices (before capacity) for e, P_e its mean
             probability (Switch eq. 4); k when routing is uniform; per group, averaged over groups
    z-loss   mean over tokens of logsumexp(logits)^2 (ST-MoE eq. 5), keeping router logits small
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from .linear import Linear
from .mlp import make_ffn


@dataclass
class RouterStats:
    """One MoE layer's routing in one forward: logits and probs [N, E] of its N = groups x tokens routed tokens,
    and the experts each chose (idx [N, k]; None for expert choice, balanced by construction). The sums the
    losses need are taken by router_loss, and only for the terms whose coefficient is set."""

    logits: torch.Tensor
    probs: torch.Tensor
    idx: torch.Tensor | None
    groups: int
    tokens: int  # per group

    @property
    def balanced(self) -> bool:
        """Expert choice: every expert takes its capacity, so there is no balance loss."""
        return self.idx is None

    def slots(self) -> torch.Tensor:
        """[G, E] routing choices per group and expert (before the capacity cut)."""
        G, E = self.groups, self.probs.shape[-1]
        group = torch.arange(self.idx.shape[0], device=self.idx.device)[:, None] // self.tokens  # [N, 1]
        return torch.bincount((group * E + self.idx).reshape(-1), minlength=G * E).view(G, E).float()

    def prob_sums(self) -> torch.Tensor:
        """[G, E] router probabilities summed over each group's tokens."""
        return self.probs.view(self.groups, self.tokens, -1).sum(1)


class MoE(nn.Module):
    """Routed experts (plus an optional shared one); forward returns (output, RouterStats)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.router_kind = cfg.n_experts, cfg.moe.top_k, cfg.moe.router
        self.cfg = cfg
        self.router = Linear(cfg.d_model, cfg.n_experts, bias=cfg.moe.router_bias)
        self.noise = Linear(cfg.d_model, cfg.n_experts, bias=False) if cfg.moe.router_noise else None
        self.experts = nn.ModuleList(make_ffn(cfg, cfg.moe.expert_d_ff) for _ in range(cfg.n_experts))
        self.shared = make_ffn(cfg, cfg.moe.shared_expert_d_ff) if cfg.moe.shared_expert_d_ff else None
        self.shared_gate = Linear(cfg.d_model, 1, bias=False) if cfg.moe.shared_expert_gate else None
        # utilisation since the last reset (groundup.train reads and clears it): slots each expert processed [E],
        # choices it got before the capacity cut [E], slots routed, tokens no expert processed, tokens seen.
        # A plain tensor, not a buffer: not saved, never on the meta device of a model being loaded, not
        # broadcast by DDP; made where the tokens are.
        self._counts: torch.Tensor | None = None

    # routing ---------------------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits [N, E] in fp32 for tokens x [N, C] (jitter and noise only in training)."""
        if self.training and self.cfg.moe.router_jitter:
            eps = self.cfg.moe.router_jitter
            x = x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)
        if type(self.router) in (Linear, nn.Linear):  # the product itself in fp32, not just its result
            bias = None if self.router.bias is None else self.router.bias.float()
            logits = F.linear(x.float(), self.router.weight.float(), bias)
        else:  # a wrapped router (adapter, quantized): its own forward
            logits = self.router(x).float()
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x).float())
        return logits

    def capacity(self, tokens_per_group: int) -> int | None:
        """Slots each expert takes per group (Config.capacity, with the training or eval factor)."""
        return self.cfg.moe.capacity(tokens_per_group, training=self.training)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token choice for x [N, C] -> (weights [N, k], expert ids [N, k], probabilities over all experts [N, E])."""
        logits = self.logits(x)
        probs = torch.softmax(logits, dim=-1)
        return (*self._choose(logits, probs), probs)

    def _choose(self, logits: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top_vals, top_idx = torch.topk(logits, self.top_k, dim=-1)  # [N, k]
        if self.router_kind == "topk_softmax":
            return torch.softmax(top_vals, dim=-1), top_idx
        return probs.gather(-1, top_idx), top_idx

    def _token_choice(self, weights: torch.Tensor, idx: torch.Tensor, groups: int, n: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kept slots sorted by expert: (token of each slot [M], its weight [M], slots per expert [E])."""
        N, k = idx.shape
        E = self.n_experts
        cap = self.capacity(n)
        if cap is None:
            order = torch.argsort(idx.reshape(-1), stable=True)  # slot s = token * k + rank
        else:
            if self.cfg.moe.router_priority == "score":  # the surest tokens of a group first
                by_score = torch.argsort(-weights[:, 0].view(groups, n), dim=1, stable=True)  # [G, n]
                rank = torch.empty_like(by_score).scatter_(1, by_score, torch.arange(n, device=idx.device)
                                                           .expand(groups, n)).reshape(N, 1)
            else:
                rank = (torch.arange(N, device=idx.device) % n)[:, None]  # sequence order within the group
            group = torch.arange(N, device=idx.device)[:, None] // n  # [N, 1]
            segment = idx * groups + group  # [N, k]: (expert, group)
            priority = torch.arange(k, device=idx.device)[None, :] * n + rank  # first choices before second
            order = torch.argsort((segment * (k * n) + priority).reshape(-1))  # by expert, group, priority
            seg_sorted = segment.reshape(-1)[order]
            counts = torch.bincount(seg_sorted, minlength=E * groups)
            starts = counts.cumsum(0) - counts
            place = torch.arange(N * k, device=idx.device) - starts[seg_sorted]  # 0, 1, ... within (expert, group)
            order = order[place < cap]
        per_expert = torch.bincount(idx.reshape(-1)[order], minlength=E)
        return order // k, weights.reshape(-1)[order], per_expert

    def _expert_choice(self, probs: torch.Tensor, groups: int, n: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each expert's top-capacity tokens of each group, sorted by expert: (token [M], weight [M], counts [E])."""
        cap = min(self.capacity(n), n)
        w, tok = torch.topk(probs.view(groups, n, -1).transpose(1, 2), cap, dim=-1)  # [G, E, cap]
        tok = tok + (torch.arange(groups, device=probs.device) * n)[:, None, None]
        E = self.n_experts
        counts = torch.full((E,), groups * cap, dtype=torch.long, device=probs.device)
        return tok.transpose(0, 1).reshape(-1), w.transpose(0, 1).reshape(-1), counts  # [E, G, cap] -> [M]

    # forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """x [B, T, C] -> (output [B, T, C], the layer's RouterStats)."""
        B, T, C = x.shape
        groups, n = (B, T) if self.cfg.moe.router_group == "sequence" else (1, B * T)
        flat = x.reshape(-1, C)  # [N, C], N = B*T = groups * n
        logits = self.logits(flat)
        probs = torch.softmax(logits, dim=-1)  # [N, E]
        idx = None
        if self.router_kind == "expert_choice":
            token, weight, counts = self._expert_choice(probs, groups, n)
        else:
            weights, idx = self._choose(logits, probs)
            token, weight, counts = self._token_choice(weights, idx, groups, n)
        out = self._dispatch(flat, token, weight, counts)
        if self.shared is not None:
            s = self.shared(flat)
            out = out + (s * torch.sigmoid(self.shared_gate(flat)) if self.shared_gate is not None else s)
        self._count(token, counts, idx, flat.shape[0], n)
        return out.view(B, T, C), RouterStats(logits, probs, idx, groups, n)

    def _dispatch(self, flat: torch.Tensor, token: torch.Tensor, weight: torch.Tensor,
                  counts: torch.Tensor) -> torch.Tensor:
        """sum over kept slots of weight x expert(token): one gather, then per expert one contiguous run of its
        rows through its matrices and one index_add of the weighted result (no concatenation)."""
        xs = flat[token]  # [M, C], rows grouped by expert
        w = weight.to(flat.dtype)[:, None]  # [M, 1]
        out = torch.zeros_like(flat)
        start = 0
        for e, c in enumerate(counts.tolist()):  # the one host sync: the experts' row counts
            if c:
                rows = slice(start, start + c)
                out.index_add_(0, token[rows], self.experts[e](xs[rows]) * w[rows])
            start += c
        return out

    @torch.no_grad()
    def _count(self, token: torch.Tensor, counts: torch.Tensor, idx: torch.Tensor | None, n_tokens: int,
               n: int) -> None:
        """Add this forward's figures to the counters in one in-place add: slots each expert processed, choices
        it got (expert choice: its picks), slots routed, tokens no expert processed, tokens seen."""
        wanted = counts if idx is None else torch.bincount(idx.reshape(-1), minlength=self.n_experts)
        if idx is not None and self.capacity(n) is None:  # no capacity: no token can be dropped, skip the count
            dropped = counts.new_zeros(1)
        else:
            dropped = (torch.bincount(token, minlength=n_tokens) == 0).sum().reshape(1)
        routed = n_tokens * (self.top_k if idx is not None else 1)
        add = torch.cat([counts, wanted, dropped.new_tensor([routed]), dropped, dropped.new_tensor([n_tokens])])
        self._counts = add if self._counts is None or self._counts.device != add.device else self._counts.add_(add)

    def _counter(self, i: int | slice) -> torch.Tensor:
        counts = self._counts if self._counts is not None else torch.zeros(2 * self.n_experts + 3, dtype=torch.long)
        return counts[i]

    @property
    def counters(self) -> torch.Tensor:
        """[2E + 3] every count at once: usage, wanted, routed, dropped, seen (one transfer to read them)."""
        return self._counter(slice(None))

    @property
    def usage(self) -> torch.Tensor:
        """Routing slots each expert processed since the last reset [E] (at most its capacity per group)."""
        return self._counter(slice(0, self.n_experts))

    @property
    def wanted(self) -> torch.Tensor:
        """Routing choices for each expert before the capacity cut [E]: the router's own preference."""
        return self._counter(slice(self.n_experts, 2 * self.n_experts))

    @property
    def routed(self) -> torch.Tensor:
        """Routing slots asked for (k per token; one per token for expert choice)."""
        return self._counter(2 * self.n_experts)

    @property
    def dropped(self) -> torch.Tensor:
        """Tokens that no expert processed (every slot past its expert's capacity; in expert choice, unpicked)."""
        return self._counter(2 * self.n_experts + 1)

    @property
    def seen(self) -> torch.Tensor:
        """Tokens routed since the last reset."""
        return self._counter(2 * self.n_experts + 2)

    def reset_usage(self) -> None:
        self._counts = None


def router_loss(cfg: Config, stats: list[RouterStats]) -> torch.Tensor | None:
    """The coefficient-weighted balance and z-losses of one stack's MoE layers (None without any).

    balance_scope='layer' takes each layer's E sum f P and averages them (Switch); 'stack' pools f and P over
    the layers before the product, as transformers' Mixtral, Qwen2-MoE and SwitchTransformers do.
    """
    if not stats:
        return None
    E, L, n, G = cfg.n_experts, len(stats), stats[0].tokens, stats[0].groups
    total = stats[0].logits.new_zeros(())
    if cfg.moe.router_aux_loss_coef and not stats[0].balanced:
        if cfg.moe.balance_scope == "stack":
            f = sum(s.slots() for s in stats) / (L * n)  # [G, E]
            p = sum(s.prob_sums() for s in stats) / (L * n)
            balance = E * (f * p).sum(-1).mean()
        else:
            balance = sum(E * (s.slots() / n * s.prob_sums() / n).sum(-1).mean() for s in stats) / L
        total = total + cfg.moe.router_aux_loss_coef * balance
    if cfg.moe.router_z_loss_coef:
        zsq = sum((torch.logsumexp(s.logits, -1) ** 2).sum() for s in stats)
        total = total + cfg.moe.router_z_loss_coef * zsq / (L * G * n)
    return total


def moe_layers(model: nn.Module) -> list[tuple[str, MoE]]:
    """(name, MoE) of every MoE layer of a model, in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]
