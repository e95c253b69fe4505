"""Decoder-only generation, the plain way: re-run the whole prefix for every new token.

Greedy when temperature == 0, else sampling from softmax(logits / temperature) restricted to the top_k
most likely tokens. This is the reference the KV-cached generator (inference issue) must match; it is
quadratic in length and meant for short continuations of small models.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32, *, temperature: float = 0.0,
             top_k: int | None = None, eos_token_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """input_ids [B, T] -> [B, T + n] with n <= max_new_tokens (stops early when every row hit EOS)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    was_training = model.training
    model.eval()
    ids, done = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        context = ids if limit is None else ids[:, -limit:]
        logits = model(context)[:, -1].float()  # [B, V]
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    model.train(was_training)
    return ids
