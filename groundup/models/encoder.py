"""Encoder: an encoder-only transformer (BERT, Devlin et al., 2019) with its task heads.

Inputs are ``[CLS] A [SEP] (B [SEP])`` token ids, segment (token type) ids and a padding mask. Token,
position and segment embeddings are summed and normalised; bidirectional blocks follow. Heads:
    mlm_head    masked-language-model logits over the vocabulary at every position;
    pooler      dense + tanh on the [CLS] position, feeding
    nsp_head    IsNext / NotNext logits (index 0 = IsNext, as in the BERT checkpoints), and
    classifier  sequence-classification logits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..config import Config
from ..nn.linear import Linear
from ..nn.mlp import ACTIVATIONS
from ..nn.norm import make_norm
from .base import PreTrained
from .common import check_ids, init_weights, is_trusted
from .stack import Stack


class MLMHead(nn.Module):
    """dense -> activation -> norm, then the vocabulary projection (tied to the embeddings) with a bias."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.dense = Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.ffn]
        self.norm = make_norm(cfg)
        self.decoder = Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))


class Pooler(nn.Module):
    """tanh(dense(hidden of the first token)): [B, T, C] -> [B, C]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.dense = Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class Encoder(PreTrained, Stack):
    """Embeddings -> bidirectional blocks -> heads. forward(input_ids, ...) -> MLM logits [B, T, V]."""

    def __init__(self, cfg: Config) -> None:
        if cfg.arch != "encoder":
            raise ValueError(f"Encoder needs arch='encoder', got arch={cfg.arch!r}")
        super().__init__(cfg, cfg.n_layers, causal=False)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.heads.type_vocab_size:
            self.type_embed = nn.Embedding(cfg.heads.type_vocab_size, cfg.d_model)
        self.embed_norm = make_norm(cfg) if cfg.embed_norm else None
        self.pooler = Pooler(cfg) if cfg.heads.pooler else None
        self.mlm_head = MLMHead(cfg) if cfg.heads.mlm_head else None
        self.nsp_head = Linear(cfg.d_model, 2) if cfg.heads.nsp_head else None
        self.classifier = Linear(cfg.d_model, cfg.heads.num_labels) if cfg.heads.num_labels else None
        self.tie_weights()
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.impl.init_std))

    def tie_weights(self) -> None:
        """Share the MLM output projection with the token embedding (when tied and present)."""
        if self.config.tie_embeddings and self.mlm_head is not None:
            self.mlm_head.decoder.weight = self.embed.weight

    def tied_keys(self) -> dict[str, str]:
        if self.config.tie_embeddings and self.mlm_head is not None:
            return {"mlm_head.decoder.weight": "embed.weight"}
        return {}

    # ---------------------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               weights_of: int | None = None) -> torch.Tensor:
        """Final hidden states [B, T, C] (the features BERT hands to a downstream model)."""
        return self._run(input_ids, token_type_ids, attention_mask, position_ids, weights_of)[0]

    def _run(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
             attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
             weights_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_ids(self.config, input_ids, attention_mask)
        segments = None
        if token_type_ids is not None or self.config.heads.type_vocab_size:
            segments = self._segments(input_ids, token_type_ids)
        # BERT normalises the summed token + position + segment embeddings
        x, rope = self.inputs(self.embed, input_ids, position_ids=position_ids, segments=segments,
                              norm=self.embed_norm)
        h, _, weights = self.run(x, rope=rope, attention_mask=attention_mask, weights_of=weights_of)
        return h, weights

    def _segments(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        n = self.config.heads.type_vocab_size
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if n == 0:
            raise ValueError("token_type_ids given, but the model has no segment embeddings (type_vocab_size=0)")
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids shape {tuple(token_type_ids.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        lo, hi = (0, 0) if is_trusted() else (int(token_type_ids.min()), int(token_type_ids.max()))
        if lo < 0 or hi >= n:
            raise ValueError(f"token_type_ids contain {lo if lo < 0 else hi}, outside [0, {n}) "
                             f"(type_vocab_size={n}): use 0 for sentence A and 1 for sentence B")
        return self.type_embed(token_type_ids)

    # heads -----------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Masked-LM logits [B, T, V]. attention_mask [B, T]: 1 = token, 0 = padding."""
        self._need("mlm_head", "encode() for hidden states, classify() or nsp_logits() for the other heads")
        return self.mlm_head(self.encode(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                                         position_ids=position_ids))

    def pretraining_logits(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                           attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLM logits [B, T, V], NSP logits [B, 2]) from one pass: BERT's two pre-training objectives."""
        self._need("mlm_head", "Config(mlm_head=True)")
        self._need("nsp_head", "Config(nsp_head=True, pooler=True)")
        h = self.encode(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        return self.mlm_head(h), self.nsp_head(self.pooler(h))

    def pooled(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled [CLS] representation [B, C] (dense + tanh)."""
        self._need("pooler", "Config(pooler=True)")
        return self.pooler(self.encode(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask))

    def nsp_logits(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-sentence logits [B, 2]: index 0 = B follows A (IsNext), 1 = random sentence (NotNext)."""
        self._need("nsp_head", "Config(nsp_head=True, pooler=True)")
        return self.nsp_head(self.pooled(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask))

    def classify(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence-classification logits [B, num_labels] from the pooled [CLS] output."""
        self._need("classifier", "Config(num_labels=N, pooler=True)")
        return self.classifier(self.pooled(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask))

    def features(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 pooling: Literal["mean", "cls", "pooler"] = "mean") -> torch.Tensor:
        """One vector per sequence [B, C], to feed a separate classifier (frozen BERT features).

        ``mean`` averages the final hidden states of real tokens (padding excluded); ``cls`` takes the
        [CLS] position; ``pooler`` the trained dense + tanh on it.
        """
        if pooling == "pooler":
            return self.pooled(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        h = self.encode(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        if pooling == "cls":
            return h[:, 0]
        if pooling != "mean":
            raise ValueError(f"pooling={pooling!r} is not one of 'mean', 'cls', 'pooler'")
        if attention_mask is None:
            return h.mean(dim=1)
        w = attention_mask.to(h.dtype)[..., None]  # [B, T, 1]
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)

    @torch.no_grad()
    def fill_mask(self, input_ids: torch.Tensor, *, mask_token_id: int, top_k: int = 5,
                  token_type_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
                  ) -> list[list[tuple[int, list[tuple[int, float]]]]]:
        """Top-k predictions at every [MASK]: for each row, [(position, [(token id, probability), ...])]."""
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        if not (input_ids == mask_token_id).any():
            raise ValueError(f"no mask token (id {mask_token_id}) in the input: put [MASK] where a word should be "
                             "predicted")
        self._need("mlm_head", "a model with an MLM head (BertForPreTraining / BertForMaskedLM)")
        h = self.encode(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        where = (input_ids == mask_token_id).nonzero()  # [M, 2] (row, position), row-major order
        probs = self.mlm_head(h[where[:, 0], where[:, 1]]).float().softmax(-1)  # only the masked rows: [M, V]
        top_p, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        out: list[list[tuple[int, list[tuple[int, float]]]]] = [[] for _ in range(input_ids.shape[0])]
        for (b, pos), ids, p in zip(where.tolist(), top_ids.tolist(), top_p.tolist(), strict=True):
            out[b].append((pos, list(zip(ids, p, strict=True))))
        return out

    @torch.no_grad()
    def attention_weights(self, input_ids: torch.Tensor, layer: int, *, token_type_ids: torch.Tensor | None = None,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities [B, H, T, T] of one layer (eager kernel), for heatmaps."""
        if not 0 <= layer < len(self.blocks):
            raise ValueError(f"layer={layer} is out of range: the model has {len(self.blocks)} layers")
        return self._run(input_ids, token_type_ids, attention_mask, None, weights_of=layer)[1]

    def _need(self, head: str, fix: str) -> None:
        if getattr(self, head) is None:
            raise ValueError(f"this Encoder has no {head} ({head} is off in its Config); use {fix}")
