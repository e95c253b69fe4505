"""Seq2Seq: an encoder-decoder transformer (Vaswani et al., 2017; T5, Raffel et al., 2020; Marian).

The encoder reads the source bidirectionally; the decoder is causal over the target and cross-attends to
the encoder output in every block, with the source padding hidden. Token embeddings are shared by both
stacks and (when tied) by the output projection. For generation the encoder runs once and a
DecoderCache keeps the decoder's self-attention keys/values and the projected cross-attention ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..nn.kv_cache import DecoderCache
from ..nn.linear import Linear
from .base import PreTrained
from .common import TiedHead, check_ids, init_weights
from .stack import Stack


class Seq2Seq(PreTrained, TiedHead, nn.Module):
    """forward(input_ids, decoder_input_ids=...) -> decoder logits [B, T_dec, V]."""

    def __init__(self, cfg: Config) -> None:
        if cfg.arch != "seq2seq":
            raise ValueError(f"Seq2Seq needs arch='seq2seq', got arch={cfg.arch!r}")
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.decoder = Stack(cfg, cfg.n_decoder_layers, causal=True, cross=True, first=cfg.n_layers)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.tie_weights()
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.init_std))

    # ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, *, decoder_input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                return_aux_loss: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Source ids [B, S] and target ids [B, T] (starting with the decoder start token) -> logits [B, T, V].

        attention_mask [B, S] hides source padding from the encoder and from cross-attention;
        decoder_attention_mask [B, T] hides target padding. With ``return_aux_loss`` the MoE router losses
        of both stacks (each stack's own, summed, as SwitchTransformers adds them) are returned as well.
        """
        if input_ids is None:
            raise ValueError("Seq2Seq needs encoder inputs: pass input_ids (the source token ids [B, S]); "
                             "to decode from an encoder output you already have, call decode(..., memory=...)")
        if decoder_input_ids is None:
            raise ValueError("Seq2Seq needs decoder_input_ids [B, T]: the target shifted right, starting with "
                             f"the decoder start token (id {self.decoder_start_token_id})")
        memory, enc_aux = self._encode(input_ids, attention_mask)
        logits, dec_aux = self._decode(decoder_input_ids, memory, memory_mask=attention_mask,
                                       decoder_attention_mask=decoder_attention_mask)
        return (logits, enc_aux + dec_aux) if return_aux_loss else logits

    def encode(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [B, S, C] for source ids [B, S]."""
        return self._encode(input_ids, attention_mask)[0]

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_ids(self.config, input_ids, attention_mask)
        x, rope = self.encoder.inputs(self.embed, input_ids)
        h, aux, _ = self.encoder.run(x, rope=rope, attention_mask=attention_mask)
        return h, aux

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, *,
               memory_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """Decoder logits [B, T, V] for target ids [B, T] given the encoder output ``memory`` [B, S, C].

        With a ``cache`` the ids are the new steps only; they sit after the cached positions, and
        ``decoder_attention_mask`` (if any) covers cached and new positions.
        """
        return self._decode(decoder_input_ids, memory, memory_mask=memory_mask,
                            decoder_attention_mask=decoder_attention_mask, cache=cache)[0]

    def _decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, *,
                memory_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                cache: DecoderCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        offset = cache.length if cache is not None else 0
        check_ids(cfg, decoder_input_ids, None, name="decoder_input_ids",
                  n_positions=offset + decoder_input_ids.shape[1])
        if memory.dim() != 3 or memory.shape[0] != decoder_input_ids.shape[0]:
            raise ValueError(f"memory (encoder output) must be [batch={decoder_input_ids.shape[0]}, S, C], got "
                             f"{tuple(memory.shape)}")
        if memory_mask is not None and memory_mask.shape != memory.shape[:2]:
            raise ValueError(f"attention_mask shape {tuple(memory_mask.shape)} must match the encoder output "
                             f"{tuple(memory.shape[:2])}")
        x, rope = self.decoder.inputs(self.embed, decoder_input_ids, offset=offset)
        h, aux, _ = self.decoder.run(x, rope=rope, attention_mask=decoder_attention_mask, memory=memory,
                                     memory_mask=memory_mask, cache=cache)
        if cfg.lm_head_scale == "inv_sqrt_d":
            h = h * cfg.d_model**-0.5  # T5 v1.0 rescales before its tied head
        return self.lm_head(h), aux

    def new_cache(self) -> DecoderCache:
        """An empty decoder cache for incremental decoding."""
        return DecoderCache.empty(len(self.decoder.blocks))

    @property
    def decoder_start_token_id(self) -> int:
        """The first decoder input: config.json's decoder_start_token_id, else the pad id, else 0."""
        cfg = self.config
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        return start or 0

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder inputs from labels [B, T]: start token, then labels[:, :-1]; -100 -> pad."""
        out = labels.new_empty(labels.shape)
        out[:, 0] = self.decoder_start_token_id
        out[:, 1:] = labels[:, :-1]
        pad = self.config.pad_token_id or 0
        return out.masked_fill(out == -100, pad)
