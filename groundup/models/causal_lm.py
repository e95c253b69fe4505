"""CausalLM: one decoder-only language model; GPT-2, OPT, NeoX, Falcon, MPT, Llama, Mistral and Mixtral are
presets of it (see groundup/presets.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..nn.attention import MaskSpec
from ..nn.block import Block
from ..nn.linear import Linear
from ..nn.norm import make_norm
from .common import Rope, TiedHead, add_positions, check_ids, dropout, embed, init_weights, mask_spec, unique_params


class CausalLM(TiedHead, nn.Module):
    """Token embedding -> n_layers blocks -> final norm -> lm_head. forward(input_ids) -> logits [B, T, V]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_embed = nn.Embedding(cfg.max_seq_len + cfg.pos_offset, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.final_norm else nn.Identity()
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.tie_weights()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.init_std))


    # ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, return_aux_loss: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, T] -> logits [B, T, V].

        attention_mask [B, T] (1 = token, 0 = padding) hides padded keys; position_ids [B, T] or [T]
        default to 0..T-1. With ``return_aux_loss`` the MoE load-balancing loss (mean over layers, already
        multiplied by ``router_aux_loss_coef``; zero for dense models) is returned as well.
        """
        x, mask, rope = self._prepare(input_ids, attention_mask, position_ids)
        aux_total = x.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            x, aux, _ = block(x, mask, rope=rope)
            if aux is not None:
                aux_total = aux_total + aux
        x = self.norm(x)
        if self.config.lm_head_scale == "inv_sqrt_d":
            x = x * self.config.d_model**-0.5
        logits = self.lm_head(x)
        if return_aux_loss:
            n_moe = self.config.n_layers if self.config.n_experts else 1
            return logits, aux_total * (self.config.router_aux_loss_coef / n_moe)
        return logits

    @torch.no_grad()
    def attention_weights(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Attention probabilities [B, H, T, T] of one layer, from the eager kernel (for heatmaps)."""
        if not 0 <= layer < self.config.n_layers:
            raise ValueError(f"layer={layer} is out of range: the model has {self.config.n_layers} layers")
        x, mask, rope = self._prepare(input_ids, None, None)
        for i, block in enumerate(self.blocks):
            x, _, w = block(x, mask, rope=rope, return_weights=i == layer)
            if i == layer:
                return w
        raise AssertionError("unreachable")

    def _prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor | None) -> tuple[torch.Tensor, MaskSpec, Rope | None]:
        cfg = self.config
        check_ids(cfg, input_ids, attention_mask)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = embed(cfg, self.embed, input_ids)  # [B, T, C]
        x, rope = add_positions(cfg, x, position_ids, getattr(self, "pos_embed", None))
        mask = mask_spec(cfg, causal=cfg.causal, attention_mask=attention_mask, device=input_ids.device)
        return dropout(cfg, x, self.training), mask, rope

    # ---------------------------------------------------------------------------------------------
    def set_attn_kernel(self, kernel: str) -> CausalLM:
        """Switch every layer to the 'eager', 'sdpa' or 'flash' kernel (same weights, same results)."""
        self.config = self.config.replace(attn_kernel=kernel)  # validates the name
        for block in self.blocks:
            block.attn.kernel = kernel
        return self

    def num_params(self, *, active: bool = False) -> int:
        """Unique parameters (tied weights counted once); ``active``: those used per token under top-k."""
        total = unique_params(self)
        if active and self.config.n_experts:
            per_expert = sum(p.numel() for p in self.blocks[0].mlp.experts[0].parameters())
            unused = self.config.n_experts - self.config.top_k
            total -= self.config.n_layers * unused * per_expert
        return total

    def save_pretrained(self, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write an HF folder (config.json + safetensors) that transformers loads."""
        from ..checkpoint.hf import save_pretrained

        save_pretrained(self, folder, max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype | None = None) -> CausalLM:
        """Load a local HF folder of a supported decoder family."""
        from ..checkpoint.hf import from_pretrained

        return from_pretrained(folder, dtype=dtype)

