"""Training data: offline text sources, and objectives that turn token ids into model inputs and labels."""

from .objectives import bert_pair, mask_tokens, nsp_pairs
from .sources import python_stdlib

__all__ = ["bert_pair", "mask_tokens", "nsp_pairs", "python_stdlib"]
