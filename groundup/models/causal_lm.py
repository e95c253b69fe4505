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
from ..nn.position import alibi_slopes, rope_cos_sin, sinusoidal_table


class CausalLM(nn.Module):
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
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 style: N(0, 0.02) for matrices and embeddings, zeros for biases; norms keep ones/zeros.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)

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
        logits = self.lm_head(self.norm(x))
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
                 position_ids: torch.Tensor | None
                 ) -> tuple[torch.Tensor, MaskSpec, tuple[torch.Tensor, torch.Tensor] | None]:
        cfg = self.config
        self._check_inputs(input_ids, attention_mask)
        T = input_ids.shape[1]
        device = input_ids.device
        x = self.embed(input_ids)  # [B, T, C]
        if position_ids is None:
            position_ids = torch.arange(T, device=device)
        rope = None
        if cfg.pos == "learned":
            x = x + self.pos_embed(position_ids + cfg.pos_offset)
        elif cfg.pos == "sinusoidal":
            n = int(position_ids.max()) + 1
            x = x + sinusoidal_table(n, cfg.d_model, device=device).to(x.dtype)[position_ids]
        elif cfg.pos == "rope":
            cos, sin = rope_cos_sin(cfg, position_ids, x.dtype)  # [T, rot] or [B, T, rot]
            if cos.dim() == 3:
                cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, rot]: broadcast over heads
            rope = (cos, sin)
        slopes = alibi_slopes(cfg.n_heads, cfg.alibi_max_bias, device=device) if cfg.pos == "alibi" else None
        padding = None
        if attention_mask is not None and not bool(attention_mask.all()):
            padding = attention_mask.bool()
        mask = MaskSpec(causal=cfg.causal, window=cfg.sliding_window, key_padding=padding, alibi_slopes=slopes)
        if cfg.dropout and self.training:
            x = nn.functional.dropout(x, cfg.dropout)
        return x, mask, rope

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"input_ids contain token id {bad}, outside the vocabulary [0, {cfg.vocab_size})")
        T = input_ids.shape[1]
        if cfg.pos == "learned" and T > cfg.max_seq_len:
            raise ValueError(
                f"sequence length {T} exceeds max_seq_len={cfg.max_seq_len}: learned position embeddings "
                "have no row past it; truncate the input or use a model with rope/alibi positions"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")

    # ---------------------------------------------------------------------------------------------
    def set_attn_kernel(self, kernel: str) -> CausalLM:
        """Switch every layer to the 'eager', 'sdpa' or 'flash' kernel (same weights, same results)."""
        self.config = self.config.replace(attn_kernel=kernel)  # validates the name
        for block in self.blocks:
            block.attn.kernel = kernel
        return self

    def num_params(self, *, active: bool = False) -> int:
        """Unique parameters (tied weights counted once); ``active``: those used per token under top-k."""
        total = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
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


def meta_model(cfg: Config) -> CausalLM:
    """A CausalLM on the meta device: shapes without memory (for parameter counts of 175B models)."""
    with torch.device("meta"):
        return CausalLM(cfg)

