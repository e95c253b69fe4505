"""Model families assembled from groundup.nn blocks: Config.arch picks the class."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..multimodal import CLIPConfig, FlamingoConfig, LlavaConfig
from .causal_lm import CausalLM
from .encoder import Encoder
from .flamingo import Flamingo
from .seq2seq import Seq2Seq
from .vision import CLIP, TextTower, VisionEncoder
from .vlm import Llava

# Config.arch, or a composite config's (multimodal.py: CLIPConfig "dual_encoder", LlavaConfig "vlm")
MODEL_CLASSES: dict[str, type[nn.Module]] = {"causal_lm": CausalLM, "encoder": Encoder, "seq2seq": Seq2Seq,
                                             "vision": VisionEncoder, "dual_encoder": CLIP, "vlm": Llava,
                                             "flamingo": Flamingo}


def build_model(cfg: Config | CLIPConfig | LlavaConfig | FlamingoConfig) -> nn.Module:
    """The model class for ``cfg.arch`` built from ``cfg`` (randomly initialised)."""
    return MODEL_CLASSES[cfg.arch](cfg)


def meta_model(cfg: Config | CLIPConfig | LlavaConfig | FlamingoConfig) -> nn.Module:
    """A model on the meta device: shapes without memory (for parameter counts of 175B models)."""
    with torch.device("meta"):
        return build_model(cfg)


__all__ = ["CLIP", "MODEL_CLASSES", "CausalLM", "Encoder", "Flamingo", "Llava", "Seq2Seq", "TextTower", "VisionEncoder",
           "build_model", "meta_model"]
