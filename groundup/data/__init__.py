"""Training data: objectives that turn token ids into model inputs and labels."""

from .objectives import bert_pair, mask_tokens, nsp_pairs

__all__ = ["bert_pair", "mask_tokens", "nsp_pairs"]
