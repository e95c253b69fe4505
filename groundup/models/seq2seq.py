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
from .common import TiedHead, check_ids, init_weights, lm_logits
from .stack import Stack


class Seq2Seq(PreTrained, TiedHead, nn.Module):
    """forward(input_ids, decoder_input_ids=...) -> decoder logits [B, T_dec, V]."""

    def __init__(self, cfg: Config) -> None:
        if cfg.arch != "seq2seq":
            raise ValueError(f"Seq2Seq needs arch='seq2seq', got arch={cfg.arch!r}")
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False, max_positions=cfg.encoder_positions)
        self.audio_stem = AudioStem(cfg) if cfg.n_mels else None
        self.decoder = Stack(cfg, cfg.n_decoder_layers, causal=True, cross=True, first=cfg.n_layers)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.tie_weights()
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.impl.init_std))
            if self.audio_stem is not None:  # Whisper's encoder positions are fixed sinusoids, stored as a table
                with torch.no_grad():
                    self.encoder.pos_embed.weight.copy_(whisper_sinusoids(*self.encoder.pos_embed.weight.shape))

    # ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, *, decoder_input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                return_aux_loss: bool = False, input_features: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Source ids [B, S] and target ids [B, T] (starting with the decoder start token) -> logits [B, T, V].

        attention_mask [B, S] hides source padding from the encoder and from cross-attention;
        decoder_attention_mask [B, T] hides target padding. With ``return_aux_loss`` the MoE router losses
        of both stacks (each stack's own, summed, as SwitchTransformers adds them) are returned as well.
        """
        if input_features is not None:  # an audio encoder's input (Whisper): the features, not ids
            input_ids = input_features
        if input_ids is None:
            what = "input_features (log-mel [B, n_mels, frames])" if self.audio_stem is not None else \
                "input_ids (the source token ids [B, S])"
            raise ValueError(f"Seq2Seq needs encoder inputs: pass {what}; to decode from an encoder output you "
                             "already have, call decode(..., memory=...)")
        if decoder_input_ids is None:
            raise ValueError("Seq2Seq needs decoder_input_ids [B, T]: the target shifted right, starting with "
                             f"the decoder start token (id {self.decoder_start_token_id})")
        memory, enc_aux = self._encode(input_ids, attention_mask)
        logits, dec_aux = self._decode(decoder_input_ids, memory, memory_mask=attention_mask,
                                       decoder_attention_mask=decoder_attention_mask)
        return (logits, enc_aux + dec_aux) if return_aux_loss else logits

    def encode(self, input_ids: torch.Tensor | None = None, *, attention_mask: torch.Tensor | None = None,
               input_features: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [B, S, C] for source ids [B, S], or an audio encoder's for input_features
        [B, n_mels, frames] (S = frames / 2)."""
        return self._encode(input_features if input_features is not None else input_ids, attention_mask)[0]

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.audio_stem is not None:
            x = self.audio_stem(input_ids, self.encoder.pos_embed.num_embeddings)  # [B, S, C]
            x = x + self.encoder.pos_embed.weight[: x.shape[1]]
            h, aux, _ = self.encoder.run(nn.functional.dropout(x, self.config.dropout, self.training))
            return h, aux
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
        return lm_logits(cfg, self.lm_head, h), aux  # T5 v1.0's scale before its tied head; a soft-cap if set

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


class AudioStem(nn.Module):
    """Whisper's front end: log-mel [B, n_mels, F] -> conv1d (kernel 3) -> GELU -> conv1d (kernel 3, stride 2) ->
    GELU -> [B, F / 2, C]: 3000 frames of 10 ms become 1500 positions of 20 ms."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.n_mels = cfg.n_mels
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1)

    def forward(self, features: torch.Tensor, positions: int) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[1] != self.n_mels:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"input_features must be log-mel [batch, n_mels={self.n_mels}, frames], got {shape} "
                             "(groundup.audio.log_mel makes them)")
        if not features.is_floating_point() or features.shape[2] > 2 * positions:
            raise ValueError(f"input_features: {features.shape[2]} frames of dtype {features.dtype}; the encoder takes "
                             f"float features of at most {2 * positions} frames (30 s)")
        w = self.conv1.weight
        x = nn.functional.gelu(self.conv1(features.to(w.dtype)))
        x = nn.functional.gelu(self.conv2(x))  # [B, C, F / 2]
        return x.transpose(1, 2)  # [B, F / 2, C]


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's encoder positions [length, channels]: sines then cosines of timescales spaced geometrically from 1 to
    max_timescale over channels / 2 - 1 steps."""
    step = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None]  # [length, channels / 2]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)
