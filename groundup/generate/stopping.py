"""When a row of a generation stops: at a stop token, or once its text contains a stop string.

Both decoding loops (plain and speculative) push every chosen token through one ``Stopper``, token by
token, so a row stops at the same place whichever loop produced its tokens.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch


def as_ids(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """Stop ids as a list: an id, a list of ids, or None/[] for none; anything else is named."""
    if eos_token_id is None:
        return []
    try:
        items = [eos_token_id] if hasattr(eos_token_id, "__index__") else list(eos_token_id)
        if any(isinstance(i, bool) for i in items):
            raise TypeError
        return [operator.index(i) for i in items]  # ints, numpy ints, 0-d integer tensors
    except TypeError:
        raise ValueError(f"eos_token_id={eos_token_id!r} must be an int, a list of ints, or None") from None


class Stopper:
    """Tracks which rows of a batch have stopped; a stopped row's later tokens become ``pad``."""

    def __init__(self, batch: int, *, eos: Sequence[int], pad: int, stop_strings: Sequence[str] = (),
                 tokenizer: Any = None, device: torch.device | str = "cpu") -> None:
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.pad, self.stop_strings, self.tokenizer = pad, list(stop_strings), tokenizer
        self.eos_ids = list(eos)
        self.eos = torch.tensor(self.eos_ids, device=device) if eos else None
        self.generated: list[list[int]] = [[] for _ in range(batch)]
        # A stop string of n bytes lies within the last n + 1 tokens (a token carries at least one byte; one
        # more covers a decoder that drops the first token's leading space). Decoding that tail, not each
        # token alone, keeps multi-byte characters whole and the work per step bounded.
        self.tail = max((len(x.encode("utf-8")) for x in self.stop_strings), default=0) + 1

    @property
    def all_done(self) -> bool:
        return bool(self.done.all())

    def push(self, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tok [B], the next token of every row -> (the tokens with stopped rows padded [B], which rows had
        stopped before this token [B])."""
        tok = torch.where(self.done, torch.full_like(tok, self.pad), tok)
        finished_before = self.done.clone()
        if self.eos is not None:
            self.done |= torch.isin(tok, self.eos)
        if self.stop_strings:
            for b in range(tok.shape[0]):
                if not finished_before[b]:
                    self.generated[b].append(int(tok[b]))
                    text = self.tokenizer.decode(self.generated[b][-self.tail:])
                    if any(x in text for x in self.stop_strings):
                        self.done[b] = True
        return tok, finished_before
