"""CausalLM: the one decoder-only language model. Every decoder family groundup reads (GPT-2, OPT, NeoX,
Falcon, MPT, Llama, Mistral, Qwen, Phi-3, Gemma 1-3, OLMo, the MoE decoders ...) is a Config of it: the
presets in groundup/presets.py, the layouts in checkpoint/."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..nn.attention import softcap
from ..nn.cross_entropy import cross_entropy, linear_cross_entropy
from ..nn.kv_cache import DecoderCache, cache_capacity
from ..nn.linear import Linear
from ..nn.norm import make_norm
from .base import KVPrefix, PreTrained
from .common import TiedHead, check_ids, head_input, init_weights, lm_logits
from .stack import Stack


class CausalLM(PreTrained, TiedHead, Stack):
    """Token embedding -> n_layers blocks -> final norm -> lm_head. forward(input_ids) -> logits [B, T, V]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, cfg.n_layers, causal=cfg.causal)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_norm = make_norm(cfg) if cfg.embed_norm else None  # BLOOM normalises its embeddings
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.tie_weights()
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.impl.init_std))

    # ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, return_aux_loss: bool = False,
                targets: torch.Tensor | None = None, reduction: str = "mean", cache: DecoderCache | None = None,
                logits_to_keep: int = 0, inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, T] -> logits [B, T, V], or with ``targets`` the cross-entropy loss.

        attention_mask [B, T] (1 = token, 0 = padding) hides padded keys; position_ids [B, T] or [T]
        default to 0..T-1. With ``return_aux_loss`` the MoE router losses are returned as well: the
        load-balancing loss times ``router_aux_loss_coef`` plus the z-loss times ``router_z_loss_coef``
        (nn/moe.router_loss; zero for dense models), what training adds to the cross-entropy.

        targets [B, T] (token ids aligned with the positions, -100 = no target) makes the forward return
        the fp32 cross-entropy ("mean" over targets or "sum") in place of the logits. It is computed by
        nn.cross_entropy.linear_cross_entropy, which never holds all B x T x V logits: faster and far
        smaller than logits followed by F.cross_entropy, with the same value and gradients.

        Incremental decoding: with a ``cache`` (``new_cache``) the ids are the new positions only; they
        follow the cached ones, and ``attention_mask`` [B, cached + T] covers both. ``logits_to_keep``
        = n > 0 returns the logits of the last n positions only, [B, n, V]: generation needs the last
        one after a prompt, speculative decoding the verified drafts.

        ``inputs_embeds`` [B, T, C] stands in for the token embeddings of ``input_ids`` (which still give the
        shape and are checked): a vision-language model's image features at its placeholder tokens.
        """
        x, aux_total = self.hidden(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                   inputs_embeds=inputs_embeds)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if targets is None:
            out = self.head(x)
            return (out, aux_total) if return_aux_loss else out
        x, cap = head_input(self.config, x), self.config.logit_softcap
        if type(self.lm_head) in (Linear, nn.Linear):
            out = linear_cross_entropy(x, self.lm_head.weight, targets, self.lm_head.bias, reduction=reduction,
                                       softcap=cap)
        else:  # a wrapped head (adapters, quantization): its own forward, then the loss
            out = cross_entropy(softcap(self.lm_head(x), cap), targets, reduction)
        return (out, aux_total) if return_aux_loss else out

    def hidden(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None,
               cache: DecoderCache | None = None, inputs_embeds: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The final-norm hidden states [B, T, C] that the head reads, and the MoE router losses.
        ``head(hidden(...)[0])`` equals ``forward``'s logits; scoring code (groundup.eval) applies the head
        only at the positions it scores, a few rows of [B, T, V]."""
        if self.prefix_tuning is not None:  # peft/prefix.py: trainable keys/values go into the cache first
            cache, attention_mask, position_ids = self._with_prefix(self.prefix_tuning, input_ids, cache,
                                                                    attention_mask, position_ids)
        offset = cache.length if cache is not None else 0
        check_ids(self.config, input_ids, None, offset=offset, extra_ids=self.virtual_tokens)
        want = (input_ids.shape[0], offset + input_ids.shape[1])
        if attention_mask is not None and tuple(attention_mask.shape) != want:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must be [batch, cached + new] = "
                             f"{want}")
        if position_ids is None and attention_mask is not None and self.config.pos_from_mask:
            # OPT: real tokens count 0, 1, ... whatever padding precedes them; padding sits at -1
            position_ids = (attention_mask.cumsum(-1) * attention_mask - 1)[:, offset:]  # [B, T]
        if inputs_embeds is not None and inputs_embeds.shape[:2] != input_ids.shape:
            raise ValueError(f"inputs_embeds shape {tuple(inputs_embeds.shape)} must be [batch, seq_len, d_model] for "
                             f"input_ids {tuple(input_ids.shape)}")
        x, rope = self.inputs(self.embed, input_ids, position_ids=position_ids, offset=offset, norm=self.embed_norm,
                              embeds=inputs_embeds)
        x, aux_total, _ = self.run(x, rope=rope, attention_mask=attention_mask, cache=cache)
        return x, aux_total

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., C] -> logits [..., V]: the head's scale, lm_head, the soft-cap."""
        return lm_logits(self.config, self.lm_head, x)

    def _with_prefix(self, prefix: KVPrefix, ids: torch.Tensor, cache: DecoderCache | None,
                     attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None):
        """Put the prefix into an empty (or new) cache; widen a mask and shift positions that only count the
        real tokens, so the prefix sits at positions 0..n-1 before them."""
        if cache is None:
            cache = DecoderCache.empty(self.config.n_layers)
        if cache.length == 0:
            prefix.fill(cache, ids.shape[0], self.embed.weight.dtype)
        n = prefix.n
        if attention_mask is not None and attention_mask.shape[1] == cache.length - n + ids.shape[1]:
            attention_mask = torch.cat([attention_mask.new_ones(ids.shape[0], n), attention_mask], dim=1)
        if position_ids is not None:
            position_ids = position_ids + n
        return cache, attention_mask, position_ids

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty KV cache for `capacity` positions (prompt + new tokens): for each layer with a sliding window
        smaller than that, a ring of the window's size, else preallocated; growing if None."""
        cfg = self.config
        if capacity is None:
            return DecoderCache.empty(cfg.n_layers)
        capacity = cache_capacity(cfg, capacity)  # a first size: the static cache grows past it
        capacity += self.prefix_length  # a prefix fills the first slots
        # ALiBi's bias needs key positions, which the ring's reordering does not keep: preallocate instead.
        windows = [None] * cfg.n_layers if cfg.pos == "alibi" else cfg.layer_windows
        return DecoderCache.per_layer(windows, capacity)

    @torch.no_grad()
    def attention_weights(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Attention probabilities [B, H, T, T] of one layer, from the eager kernel (for heatmaps)."""
        if not 0 <= layer < self.config.n_layers:
            raise ValueError(f"layer={layer} is out of range: the model has {self.config.n_layers} layers")
        check_ids(self.config, input_ids, None, extra_ids=self.virtual_tokens)
        x, rope = self.inputs(self.embed, input_ids, norm=self.embed_norm)
        return self.run(x, rope=rope, weights_of=layer)[2]
