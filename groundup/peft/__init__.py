"""Parameter-efficient fine-tuning on a frozen base model: LoRA (lora.py), in the peft library's adapter
format (io.py)."""

from .io import AdapterError, has_adapter, load_adapter, save_adapter, write_adapter
from .lora import LoraConfig, LoraLinear, apply_lora, lora_layers, merge_and_unload, merge_lora, unmerge_lora

__all__ = ["AdapterError", "LoraConfig", "LoraLinear", "apply_lora", "has_adapter", "load_adapter", "lora_layers",
           "merge_and_unload", "merge_lora", "save_adapter", "unmerge_lora", "write_adapter"]
