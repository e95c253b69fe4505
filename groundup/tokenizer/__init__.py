"""Byte-pair-encoding tokenizers: training, HF tokenizer.json io, chat templates."""

from .components import UnsupportedTokenizer
from .encoding import AddedToken
from .tokenizer import Tokenizer

__all__ = ["AddedToken", "Tokenizer", "UnsupportedTokenizer"]
