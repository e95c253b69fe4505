"""Sentence vectors from an encoder folder (BERT-style), for /v1/embeddings and `groundup embed`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tokenizer.encoding import Padding


def encoder_batch(tok, texts: Sequence[str], *, allowed_special="all") -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """ids, token types and attention mask [B, T] of the texts: the tokenizer's own truncation and padding
    (a fixed length, for some sentence-embedding folders) and its masks, padded to the longest otherwise."""

    batch = tok.encode_batch_plus(list(texts), allowed_special=allowed_special)
    if tok.padding is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.token_to_id("[PAD]") or 0)
        Padding(pad_id=pad).apply(batch)
    return (torch.tensor([e.ids for e in batch]), torch.tensor([e.type_ids for e in batch]),
            torch.tensor([e.attention_mask for e in batch]))


@torch.no_grad()
def embed(model, tok, texts: Sequence[str], *, pooling: str = "mean") -> tuple[torch.Tensor, int]:
    """(vectors [B, C] in fp32, tokens read) of ``texts``; special tokens in a text are plain text."""
    ids, types, mask = encoder_batch(tok, texts, allowed_special=())
    types = types if model.config.heads.type_vocab_size else None
    vecs = model.features(ids, attention_mask=mask, token_type_ids=types, pooling=pooling)
    return vecs.float(), int(mask.sum())
