"""groundup: large language models from the ground up.

The names below are the public API (docs/architecture.md). Subpackages are attributes too: ``gu.peft``,
``gu.train``, ``gu.data`` ... are imported on first use, so ``import groundup`` stays light, and a
subpackage that needs an optional extra fails only when it is reached, naming the extra to install.
``gu.generate`` is both the generation package and its entry point: ``gu.generate(model, ids, ...)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import calc, generate
from .checkpoint.hf import from_pretrained
from .config import Config
from .models import CausalLM, Encoder, Seq2Seq
from .tokenizer import Tokenizer

# Subpackages reached as attributes and imported on first use (PEP 562).
LAZY = ("align", "checkpoint", "data", "eval", "models", "multimodal", "nn", "peft", "quant", "serve", "tokenizer",
        "train", "utils", "presets", "vision", "audio")


def __getattr__(name: str) -> ModuleType:
    if name in LAZY:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":
                raise AttributeError(f"groundup has no subpackage {name!r}") from None
            raise
    raise AttributeError(f"module 'groundup' has no attribute {name!r}")


__all__ = ["CausalLM", "Config", "Encoder", "Seq2Seq", "Tokenizer", "calc", "from_pretrained", "generate"]
__version__ = "0.1.0"
