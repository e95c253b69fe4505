"""What every model class shares (CausalLM, Encoder, Seq2Seq and the multimodal models built on them): the HF
folder entry points, generation, parameter counts, kernel and activation-checkpointing switches, and the
hooks a model offers to adapters.

This is the one place where models reach up the layers (to checkpoint/ and generate/), and it does so
inside the methods, at call time: model code below it never imports them, so the dependency direction
config -> nn -> models -> checkpoint -> peft -> generate holds at import time (tests/test_layers.py).

Adapter hooks (declared, not found by attribute name). Every model carries:
    prefix_tuning    a KVPrefix (peft/prefix.py) whose keys/values go into the cache before the input, or None
    modules_to_save  names of whole modules trained next to an adapter and saved in its folder ([] = none)
    lora_config, ia3_config   the adapter settings once one is applied (None before)
    quantization     the QuantSpec (nn/qspec.py) once layers are weight-only quantized
and ``virtual_tokens``, the ids past the vocabulary a soft prompt (peft/prompt.py) adds to the embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import Config
from ..nn.attention import Attention
from ..nn.kv_cache import DecoderCache
from ..nn.moe import MoE
from .common import unique_params
from .stack import Stack


@runtime_checkable
class KVPrefix(Protocol):
    """Trainable keys and values that every layer attends to before the input (prefix tuning)."""

    n: int  # prefix positions

    def fill(self, cache: DecoderCache, batch: int, dtype: torch.dtype) -> None:
        """Put the prefix's keys and values into an empty cache for ``batch`` rows."""


class PreTrained:
    """Mixin for every groundup model (an nn.Module with a ``config``)."""

    config: Config

    def init_hooks(self) -> None:
        """Declare the adapter hooks empty (called by each model's __init__)."""
        self.prefix_tuning: KVPrefix | None = None
        self.modules_to_save: list[str] = []
        self.lora_config: Any = None
        self.quantization: Any = None  # an nn.qspec.QuantSpec once layers are quantized
        self.ia3_config: Any = None

    @property
    def virtual_tokens(self) -> int:
        """Ids past the vocabulary that the input may hold (a soft prompt's virtual tokens; 0 without)."""
        return int(getattr(self.embed, "num_virtual", 0))

    @property
    def prefix_length(self) -> int:
        """Cache positions a prefix fills before the input (0 without prefix tuning)."""
        return self.prefix_tuning.n if self.prefix_tuning is not None else 0

    # ---------------------------------------------------------------------------------------------
    def num_params(self, *, active: bool = False) -> int:
        """Unique parameters (tied weights counted once); ``active``: those used per token, i.e. without
        the experts a top-k router leaves out."""
        total = unique_params(self)
        if active:
            for m in self.modules():
                if isinstance(m, MoE):
                    per_expert = sum(p.numel() for p in m.experts[0].parameters())
                    total -= (m.n_experts - m.top_k) * per_expert
        return total

    def set_attn_kernel(self, kernel: str) -> PreTrained:
        """Switch every attention layer to the 'eager', 'sdpa' or 'flash' kernel (same weights, same results)."""
        self.config = self.config.replace(attn_kernel=kernel)  # validates the name
        for m in self.modules():
            if isinstance(m, Attention):
                m.kernel = kernel
        return self

    def set_activation_checkpointing(self, on: bool = True) -> PreTrained:
        """Trade compute for memory in training: recompute each block's activations in backward (every
        stack: an encoder-decoder has two)."""
        for m in self.modules():
            if isinstance(m, Stack):
                m.activation_checkpointing = on
        return self

    # Entry points that live in higher layers. The declared exception to the layer order: they are imported at
    # call time (checkpoint/ and generate/ import models/ at module level), as transformers' PreTrainedModel does.
    def generate(self, input_ids=None, max_new_tokens: int = 32, **options) -> torch.Tensor:
        """Generation with this model: groundup.generate(self, input_ids, max_new_tokens, **options), whose
        keyword names (transformers' own) are the options (an audio model takes ``input_features=``)."""
        from ..generate.entry import generate  # declared exception (above)

        return generate(self, input_ids, max_new_tokens, **options)

    def save_pretrained(self, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
        """Write an HF folder (config.json + safetensors) that transformers loads; atomic."""
        from ..checkpoint.hf import save_pretrained  # declared exception (above)

        return save_pretrained(self, folder, max_shard_bytes=max_shard_bytes)

    def save_gguf(self, path: str | Path, *, dtype: str = "f16", tokenizer: Any = None) -> Path:
        """Write one GGUF file (llama.cpp's format): matrices in f32/f16/bf16/q8_0/q4_0, the tokenizer in its
        metadata when given; atomic."""
        from ..checkpoint.gguf import save_gguf  # declared exception (above)

        return save_gguf(self, path, dtype=dtype, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype | None = None) -> nn.Module:
        """Load a local HF folder; the class must match the folder's architecture (gu.from_pretrained
        picks the class itself)."""
        from ..checkpoint.hf import from_pretrained  # declared exception (above)

        model = from_pretrained(folder, dtype=dtype)
        if not isinstance(model, cls):
            raise ValueError(f"{folder} holds a {type(model).__name__} (arch={model.config.arch!r}), not a "
                             f"{cls.__name__}; use groundup.from_pretrained(folder) to get the right class")
        return model
