"""groundup: large language models from the ground up."""

from . import calc
from .checkpoint.hf import from_pretrained
from .config import Config
from .models.causal_lm import CausalLM

__all__ = ["CausalLM", "Config", "calc", "from_pretrained"]
__version__ = "0.1.0"
