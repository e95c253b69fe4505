"""Decoding: KV-cached decoder-only generation and streaming (sampling.py holds the token choice,
speculative.py draft-model decoding); greedy and beam search for encoder-decoder models."""

from .causal import generate, generate_uncached, stream
from .seq2seq import beam_search, greedy
from .speculative import SpeculativeStats

__all__ = ["SpeculativeStats", "beam_search", "generate", "generate_uncached", "greedy", "stream"]
