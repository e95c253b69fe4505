"""MoEConfig: a mixture of experts on the FFN (Shazeer et al., 2017; Fedus et al., 2021; Zoph et al., 2022): the
router, capacity and losses of the one MoE block (nn/moe.py). ``Config.moe`` is None for a dense model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .checks import Record, check_literals

# topk_softmax: softmax over the k largest logits (Mixtral); softmax_topk: the k largest of the softmax over all
# (GShard, Qwen2-MoE); switch: softmax_topk with k = 1 (Fedus et al., 2021); expert_choice: each expert takes its
# top-capacity tokens (Zhou et al., 2022)
Router = Literal["topk_softmax", "softmax_topk", "switch", "expert_choice"]
RouterGroup = Literal["batch", "sequence"]  # the tokens that share the experts' capacity and the balance statistics
RouterPriority = Literal["sequence", "score"]  # who keeps a full expert: the earlier token, or the surer one (BPR)
# per layer: each MoE layer's E sum f P, averaged (Switch); stack: f and P pooled over the stack's MoE layers first,
# as transformers computes it (its families load with it), which lets one layer's skew offset another's
BalanceScope = Literal["layer", "stack"]


@dataclass
class MoEConfig(Record):
    """Routed experts in place of the dense FFN (in every layer, or the ``moe_layers``)."""

    n_experts: int = 8
    top_k: int = 2  # experts per token; for expert_choice, the mean number of experts a token gets
    router: Router = "topk_softmax"
    router_aux_loss_coef: float = 0.01  # alpha of the load-balancing loss alpha * E * sum_e f_e P_e
    router_z_loss_coef: float = 0.0  # ST-MoE's router z-loss, mean logsumexp(logits)^2 (Zoph et al., 2022)
    balance_scope: BalanceScope = "layer"
    router_group: RouterGroup = "batch"
    # capacity per expert and group = ceil(top_k x tokens per group x factor / n_experts); None: no limit (no token
    # is dropped). A token past its expert's capacity gets no output from it: the residual carries it on.
    capacity_factor: float | None = None
    eval_capacity_factor: float | None = None  # in eval mode; None: capacity_factor
    expert_capacity: int | None = None  # a fixed capacity in tokens (SwitchTransformers' config), over the factors
    router_priority: RouterPriority = "sequence"
    router_jitter: float = 0.0  # training: router inputs x U(1 - eps, 1 + eps) (Switch)
    router_noise: bool = False  # training: noisy top-k gating, logits + N(0, 1) softplus(x W_noise) (Shazeer, 2017)
    router_bias: bool = False
    # expert_choice looks at every token of a group before choosing, future ones included: in a causal stack it is
    # refused unless this opt-in is set (training sees the future, and generation's one-token steps route differently)
    expert_choice_causal: bool = False
    expert_d_ff: int | None = None  # routed experts' width (fine-grained experts); None: the Config's d_ff
    shared_expert_d_ff: int = 0  # an always-on expert of this width (DeepSeekMoE, Qwen2-MoE); 0: none
    shared_expert_gate: bool = False  # its output x sigmoid(x . w) (Qwen2-MoE)
    moe_layers: list[int] | None = None  # the stack layers that are MoE (seq2seq: decoder layers after the encoder's)

    def __post_init__(self) -> None:
        check_literals(self)
        if isinstance(self.n_experts, bool) or not isinstance(self.n_experts, int) or self.n_experts < 2:
            raise ValueError(f"n_experts={self.n_experts!r}: a mixture needs at least 2 experts (n_experts=1 is a "
                             "dense FFN with a router; use n_experts=0 for a dense FFN)")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        for name in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name}={value!r} must be a positive number (1.0: room for an even share) or None "
                                 "(no capacity limit)")
        for name in ("expert_capacity", "expert_d_ff"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r} must be a positive integer or None")
        if not isinstance(self.shared_expert_d_ff, int) or self.shared_expert_d_ff < 0:
            raise ValueError(f"shared_expert_d_ff={self.shared_expert_d_ff!r} must be >= 0 (0: no shared expert)")
        if self.shared_expert_gate and not self.shared_expert_d_ff:
            raise ValueError("shared_expert_gate=True gates the shared expert: set shared_expert_d_ff")
        if not 0.0 <= self.router_jitter < 1.0:
            raise ValueError(f"router_jitter={self.router_jitter} must be in [0, 1)")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.router == "switch" and self.top_k != 1:
            raise ValueError(f"router='switch' routes each token to one expert: top_k={self.top_k} must be 1")
        if self.router == "expert_choice":
            if self.capacity_factor is None and self.expert_capacity is None:
                raise ValueError("router='expert_choice' gives each expert a fixed number of tokens: set "
                                 "capacity_factor (e.g. 1.0) or expert_capacity")
            if self.router_noise:
                raise ValueError("router_noise (noisy top-k gating) is for token-choice routers, not expert_choice")

    def check_layers(self, n_stack_layers: int, causal_layers: list[int], seq2seq: bool) -> None:
        """The checks that need the stack: ``moe_layers`` in range, expert choice in causal layers."""
        n = n_stack_layers
        if self.moe_layers is not None and (
                not isinstance(self.moe_layers, list) or len(set(self.moe_layers)) != len(self.moe_layers)
                or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in self.moe_layers)):
            raise ValueError(f"moe_layers={self.moe_layers!r} must list distinct layer indices in [0, {n})"
                             + (" (encoder layers first, then the decoder's)" if seq2seq else ""))
        causal_moe = [i for i in causal_layers if self.moe_layers is None or i in self.moe_layers]
        if self.router == "expert_choice" and causal_moe and not self.expert_choice_causal:
            raise ValueError(f"router='expert_choice' in a causal stack (MoE layers {causal_moe[:4]}): each expert "
                             "picks among all tokens of a group, future ones too, so a token's output depends on what "
                             "follows it and cached generation routes differently; set expert_choice_causal=True "
                             "to accept that, or use a token-choice router")

    def capacity(self, tokens_per_group: int, *, training: bool = True) -> int | None:
        """Routing slots one expert takes per group: expert_capacity, else ceil(top_k x tokens x factor / E)
        with the training or eval factor; None without a limit. (MIT's example: 6 tokens, 3 experts, top-1,
        factor 1.0 -> 2; 1.5 -> 3.)"""
        if self.expert_capacity is not None:
            return self.expert_capacity
        factor = self.capacity_factor if training else (self.eval_capacity_factor or self.capacity_factor)
        if factor is None:
            return None
        # the epsilon keeps an exact product (6 x 1.0 / 3 = 2.0000000000000004 in floats) from rounding up
        return max(1, math.ceil(self.top_k * tokens_per_group * factor / self.n_experts - 1e-9))

