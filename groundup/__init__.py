"""groundup: large language models from the ground up."""

from . import calc, data
from .checkpoint.hf import from_pretrained
from .config import Config
from .generate import generate
from .models import CausalLM, Encoder, Seq2Seq
from .tokenizer import Tokenizer

__all__ = ["CausalLM", "Config", "Encoder", "Seq2Seq", "Tokenizer", "calc", "data", "from_pretrained", "generate"]
__version__ = "0.1.0"
