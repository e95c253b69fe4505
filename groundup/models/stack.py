"""Stack: a run of blocks with its own positions and final norm. A CausalLM is one causal stack with an
embedding and an lm_head; an Encoder is one bidirectional stack with embeddings and heads; a Seq2Seq model
is a bidirectional encoder stack plus a causal decoder stack whose blocks cross-attend to the encoder
output."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import Config
from ..nn.attention import MaskSpec
from ..nn.block import Block
from ..nn.kv_cache import DecoderCache
from ..nn.moe import router_loss
from ..nn.norm import make_norm
from .common import Ropes, add_positions, dropout, embed, has_padding, mask_spec


class Stack(nn.Module):
    """``n_layers`` blocks; ``causal`` picks decoder or encoder masking, ``cross`` adds cross-attention.

    T5 keeps one relative-bias table per stack (``rel_bias``, [n_buckets, H]), shared by all its layers.
    ``first`` is the stack's first layer among all of the model's (a seq2seq decoder's follow the encoder's):
    Config.is_moe_layer counts that way.
    """

    def __init__(self, cfg: Config, n_layers: int, *, causal: bool, cross: bool = False, first: int = 0,
                 max_positions: int | None = None) -> None:
        super().__init__()
        self.config, self.causal = cfg, causal
        if cfg.pos == "learned":  # max_positions: a table of its own (Whisper's encoder has 1500, its decoder 448)
            self.pos_embed = nn.Embedding((max_positions or cfg.max_seq_len) + cfg.pos_offset, cfg.d_model)
        if cfg.pos == "relative":
            self.rel_bias = nn.Embedding(cfg.score_bias.rel_buckets, cfg.n_heads)
        # Each layer's window and RoPE kind. A per-layer pattern (layer_types) is a decoder-only model's; an
        # encoder or a seq2seq stack has one window for every layer, and only causal layers are windowed.
        windows = cfg.layer_windows if cfg.arch == "causal_lm" else [cfg.sliding_window] * n_layers
        self.windows = [w if causal else None for w in windows]
        self.rope_kinds = cfg.layer_types or ["global"] * n_layers
        # The distinct windows (a tuple, since traced code iterates it) and, for each, the first layer that has
        # it: that layer's cache holds the positions kept so far, which offset the window's mask.
        self.distinct_windows = tuple(dict.fromkeys(self.windows))
        self.first_of_window = {w: self.windows.index(w) for w in self.distinct_windows}
        self.blocks = nn.ModuleList(Block(cfg, cross=cross, moe=cfg.is_moe_layer(first + i)) for i in range(n_layers))
        self.norm = make_norm(cfg) if cfg.final_norm else nn.Identity()

    def inputs(self, table: nn.Embedding, ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
               offset: int = 0, segments: torch.Tensor | None = None, norm: nn.Module | None = None,
               embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, Ropes | None]:
        """Token ids [B, T] -> (the stack's input [B, T, C], RoPE cos/sin or None).

        Embeds (scaled if configured), adds ``segments`` (BERT token types), adds absolute positions
        (``offset``.. by default, i.e. after a cache) or prepares RoPE, applies ``norm`` (BERT's embedding
        LayerNorm) and dropout. ``embeds`` [B, T, C] replaces the token embeddings (a multimodal model's, where
        image features stand in for placeholder tokens).
        """
        x = embed(self.config, table, ids) if embeds is None else embeds  # [B, T, C]
        if segments is not None:
            x = x + segments
        if position_ids is None:
            position_ids = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        # the length so far (dynamic NTK's): with left padding the longest row's, which has no padding
        x, rope = add_positions(self.config, x, position_ids, getattr(self, "pos_embed", None),
                                seq_len=offset + ids.shape[1])
        if norm is not None:
            x = norm(x)
        return dropout(self.config, x, self.training), rope

    def run(self, x: torch.Tensor, *, rope: Ropes | None = None, attention_mask: torch.Tensor | None = None,
            memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
            cache: DecoderCache | None = None, weights_of: int | None = None,
            hidden_states: list[torch.Tensor] | None = None,
            before_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stack inputs x [B, T, C] -> (normed hidden states [B, T, C], the stack's router losses (balance and
        z-loss with their coefficients, nn/moe.router_loss; a zero scalar without MoE layers), attention
        weights of layer ``weights_of`` or None).

        ``attention_mask`` [B, S] marks real tokens among this stack's keys (with a cache: the cached and
        the new positions); ``memory`` [B, S_enc, C] with ``memory_mask`` [B, S_enc] is the encoder output
        a decoder cross-attends to. Queries sit after the cached positions. A ``hidden_states`` list receives
        the input and every block's output (before the final norm), transformers' ``hidden_states``.
        ``before_block(i, x)`` runs before block i and returns its input: the layers a model inserts into a frozen
        stack (Flamingo's gated cross-attention).
        """
        masks = {w: self._mask(w, attention_mask, cache, x) for w in self.distinct_windows}
        cross_mask = None
        if memory is not None:
            # cross-attention sees every real encoder token: no causality, no position bias
            cross_mask = MaskSpec(causal=False, key_padding=has_padding(memory_mask))
        weights = None
        stats = []
        recompute = (getattr(self, "activation_checkpointing", False) and self.training and cache is None
                     and torch.is_grad_enabled())
        for i, block in enumerate(self.blocks):
            if before_block is not None:
                x = before_block(i, x)
            if hidden_states is not None:
                hidden_states.append(x)
            layer_cache = cache.layers[i] if cache is not None else None
            mask, layer_rope = masks[self.windows[i]], rope[self.rope_kinds[i]] if isinstance(rope, dict) else rope
            if recompute and i != weights_of:
                # Keep only each block's input; rebuild its activations during backward (Chen et al., 2016).
                # The RNG state is replayed, so dropout masks, and therefore gradients, are unchanged.
                x, aux, w = torch.utils.checkpoint.checkpoint(_fresh_mask_block, block, x, mask, rope=layer_rope,
                                                              memory=memory, memory_mask=cross_mask,
                                                              use_reentrant=False)
            else:
                x, aux, w = block(x, mask, rope=layer_rope, memory=memory, memory_mask=cross_mask, cache=layer_cache,
                                  return_weights=i == weights_of)
            if aux is not None:
                stats.append(aux)
            if i == weights_of:
                weights = w
        if hidden_states is not None:
            hidden_states.append(x)
        aux_total = router_loss(self.config, stats)
        if aux_total is None:
            aux_total = x.new_zeros((), dtype=torch.float32)
        return self.norm(x), aux_total, weights

    def block_runner(self, x: torch.Tensor, rope: Ropes | None) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """A function (i, h) -> block i's output for inputs h [B, T, C] shaped like ``x`` (same T, no cache, no
        padding): the blocks one at a time, as Stack.run calls them, for layer-by-layer calibration
        (groundup.quant.calibrate)."""
        masks = {w: self._mask(w, None, None, x) for w in self.distinct_windows}

        def run(i: int, h: torch.Tensor) -> torch.Tensor:
            layer_rope = rope[self.rope_kinds[i]] if isinstance(rope, dict) else rope
            return self.blocks[i](h, masks[self.windows[i]], rope=layer_rope)[0]

        return run

    def _mask(self, window: int | None, attention_mask: torch.Tensor | None, cache: DecoderCache | None,
              x: torch.Tensor) -> MaskSpec:
        """The MaskSpec of the layers with this window. Their queries follow the cached keys they will see: all
        of them, or a rolling cache's last ones (a windowed layer's cache may keep fewer than a global one's)."""
        offset = cache.layers[self.first_of_window[window]].self_kv.kept if cache is not None else 0
        if attention_mask is not None and cache is not None:
            attention_mask = attention_mask[:, attention_mask.shape[1] - offset - x.shape[1]:]  # [B, kept + T]
        rel = self.rel_bias.weight if self.config.pos == "relative" else None
        return mask_spec(self.config, causal=self.causal, attention_mask=attention_mask, device=x.device,
                         q_offset=offset, rel_table=rel, window=window)


def _fresh_mask_block(block: Block, x: torch.Tensor, mask: MaskSpec, **kwargs):
    """A block call whose mask memo starts empty, so the forward and its recomputation build (and save)
    the same tensors (a memoised T5 relative bias would otherwise be skipped in the recomputation)."""
    if isinstance(kwargs.get("memory_mask"), MaskSpec):
        kwargs["memory_mask"] = dataclasses.replace(kwargs["memory_mask"], _dense={})
    return block(x, dataclasses.replace(mask, _dense={}), **kwargs)
