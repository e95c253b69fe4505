"""Decoding: plain decoder-only generation; greedy and beam search for encoder-decoder models."""

from .causal import generate
from .seq2seq import beam_search, greedy

__all__ = ["beam_search", "generate", "greedy"]
