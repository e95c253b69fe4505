"""Choosing the next token from logits: pure functions on [B, V] tensors, applied in this order.

1. repetition penalty (Keskar et al., 2019, CTRL): a token already in the row has its logit divided by
   the penalty when positive and multiplied by it when negative, so it becomes less likely either way;
2. temperature: logits / T (T = 0 means greedy: the argmax, no randomness);
3. top-k: keep the k largest logits (Fan et al., 2018);
4. top-p, nucleus (Holtzman et al., 2020): keep the smallest set of most likely tokens whose probability
   reaches p (always at least one token);
then sample from the softmax of what is left.
"""

from __future__ import annotations

import torch


def check_sampling(*, temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float) -> None:
    """Raise ValueError naming the first setting that is out of range."""
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None for no top-k filter)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None for no nucleus filter)")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0 = none)")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float,
                             seen_mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V]; seen [B, T] token ids already in each row (seen_mask [B, T]: 1 = count it)."""
    if penalty == 1.0:
        return logits
    if seen_mask is not None:
        # Ignored places (padding) point at a real token of the row, counted anyway: repeating an index
        # in the gather/scatter below changes nothing.
        seen = torch.where(seen_mask.bool(), seen, seen[:, -1:])
    picked = logits.gather(1, seen)  # [B, T]
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the row's k-th largest to -inf."""
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their probability reaches p; -inf for the rest."""
    if p >= 1.0:
        return logits
    # A token goes when the mass of it and of every less likely token is at most 1 - p (the more likely
    # ones already reach p). Summed from the least likely end, small tail masses stay exact in fp32;
    # summed from the top they round to 1.0 and a p just below 1 dropped tokens it should keep.
    sorted_logits, order = logits.sort(dim=-1)  # [B, V], ascending
    tail = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = tail <= 1 - p
    drop_sorted[..., -1] = False  # the most likely token always stays
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def probabilities(logits: torch.Tensor, *, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """The distribution sampling draws from: logits [..., V] (temperature > 0) -> fp32 probabilities
    [..., V] after temperature, top-k and top-p (zero outside the kept tokens)."""
    shape = logits.shape
    logits = logits.float().reshape(-1, shape[-1]) / temperature  # [N, V]: the filters work on rows
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits.softmax(-1).reshape(shape)


def next_token(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] (after any repetition penalty) -> token ids [B]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def no_stop_yet(scores: torch.Tensor, eos: list[int], generated: int, min_new_tokens: int) -> torch.Tensor:
    """Scores [N, V] with the stop ids made impossible while fewer than ``min_new_tokens`` tokens have been
    generated (transformers' MinNewTokensLengthLogitsProcessor)."""
    if eos and generated < min_new_tokens:
        scores = scores.clone()
        scores[:, eos] = -float("inf")
    return scores
