"""The attention mask and positions of a batch being generated: left-padded prompts, then generated tokens.

Both decoding loops (plain and speculative) read the mask up to the current length and the positions of
the new tokens from one GrowingMask. It is extended by doubling as tokens come, so a call that allows
10**8 new tokens holds a mask for the tokens it produced, not for the ones it might.
"""

from __future__ import annotations

import torch


class GrowingMask:
    """mask [B, T] of the prompts (1 = token, 0 = left padding), then ones for every generated token."""

    def __init__(self, mask: torch.Tensor, expected: int = 0) -> None:
        self.mask = mask
        self.pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self._grow(mask.shape[1] + min(expected, max(mask.shape[1], 64)))  # a first guess, grown on demand

    def _grow(self, width: int) -> None:
        have = self.mask.shape[1]
        if width > have:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], max(width - have, have))], 1)
            self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 in every row

    def upto(self, n: int) -> torch.Tensor:
        """The mask of the first n positions [B, n]."""
        self._grow(n)
        return self.mask[:, :n]

    def positions(self, start: int, end: int) -> torch.Tensor:
        """Position ids of sequence places start..end-1 [B, end - start]."""
        self._grow(end)
        return self.pos[:, start:end]
