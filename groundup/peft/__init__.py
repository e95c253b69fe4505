"""Parameter-efficient fine-tuning on a frozen base model: LoRA (lora.py), in the peft library's adapter
format (io.py)."""

from .io import AdapterError, load_adapter, save_adapter
from .lora import LoraConfig, LoraLinear, apply_lora, lora_layers, merge_and_unload, merge_lora, unmerge_lora

__all__ = ["AdapterError", "LoraConfig", "LoraLinear", "apply_lora", "load_adapter", "lora_layers",
           "merge_and_unload", "merge_lora", "save_adapter", "unmerge_lora"]
