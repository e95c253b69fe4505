"""Byte-pair-encoding tokenizers: training, HF tokenizer.json io, chat templates."""

from .components import UnsupportedTokenizer
from .tokenizer import AddedToken, Tokenizer

__all__ = ["AddedToken", "Tokenizer", "UnsupportedTokenizer"]
