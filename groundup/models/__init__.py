"""Model families assembled from groundup.nn blocks: Config.arch picks the class."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .causal_lm import CausalLM
from .encoder import Encoder
from .seq2seq import Seq2Seq

MODEL_CLASSES: dict[str, type[nn.Module]] = {"causal_lm": CausalLM, "encoder": Encoder, "seq2seq": Seq2Seq}


def build_model(cfg: Config) -> CausalLM | Encoder | Seq2Seq:
    """The model class for ``cfg.arch`` built from ``cfg`` (randomly initialised)."""
    return MODEL_CLASSES[cfg.arch](cfg)


def meta_model(cfg: Config) -> CausalLM | Encoder | Seq2Seq:
    """A model on the meta device: shapes without memory (for parameter counts of 175B models)."""
    with torch.device("meta"):
        return build_model(cfg)


__all__ = ["MODEL_CLASSES", "CausalLM", "Encoder", "Seq2Seq", "build_model", "meta_model"]
