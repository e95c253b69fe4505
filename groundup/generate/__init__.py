"""Decoding: greedy and beam search for encoder-decoder models (decoder-only generation follows)."""

from .seq2seq import beam_search, greedy

__all__ = ["beam_search", "greedy"]
