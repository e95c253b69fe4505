"""Model families assembled from groundup.nn blocks."""

from .causal_lm import CausalLM, meta_model

__all__ = ["CausalLM", "meta_model"]
