"""Training data: sources (files, globs, the Python stdlib), token caches, mixtures, objectives."""

from .mixture import Mixture
from .objectives import bert_pair, mask_tokens, nsp_pairs, span_corruption
from .sources import STDLIB, Source, python_stdlib
from .tokens import TokenData, pack, tokenize_source

__all__ = ["STDLIB", "Mixture", "Source", "TokenData", "bert_pair", "mask_tokens", "nsp_pairs", "pack",
           "python_stdlib", "span_corruption", "tokenize_source"]
