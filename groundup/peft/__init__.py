"""Parameter-efficient fine-tuning on a frozen base model: LoRA (lora.py; over a 4-bit base, QLoRA), IA3 (ia3.py),
BitFit (bitfit.py), prompt tuning (prompt.py), prefix tuning (prefix.py); adapters in the peft library's folder
format (io.py); many LoRA adapters served in one batch (multi.py)."""

from .bitfit import apply_bitfit
from .ia3 import IA3Config, IA3Linear, apply_ia3, ia3_layers
from .io import AdapterError, adapter_layers, has_adapter, load_adapter, save_adapter, write_adapter
from .lora import (
                   LoraConfig,
                   LoraLinear,
                   adapters_disabled,
                   apply_lora,
                   lora_layers,
                   merge_and_unload,
                   merge_lora,
                   merge_quantized,
                   unmerge_lora,
)
from .multi import LoraBank, MultiLoraLinear
from .prefix import PrefixTuning, apply_prefix_tuning, prefix_of
from .prompt import SoftPromptEmbedding, apply_prompt_tuning, soft_prompt

__all__ = ["AdapterError", "IA3Config", "IA3Linear", "LoraBank", "LoraConfig", "LoraLinear", "MultiLoraLinear",
           "PrefixTuning", "SoftPromptEmbedding", "adapter_layers", "adapters_disabled", "apply_bitfit", "apply_ia3",
           "apply_lora",
           "apply_prefix_tuning", "apply_prompt_tuning", "has_adapter", "ia3_layers", "load_adapter", "lora_layers",
           "merge_and_unload", "merge_lora", "merge_quantized", "prefix_of", "save_adapter", "soft_prompt",
           "unmerge_lora", "write_adapter"]
