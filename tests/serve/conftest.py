"""Shared pieces of the serving tests: a tiny model, peft adapter folders for it, and a character tokenizer."""

from __future__ import annotations

import pytest
import torch
from serve_util import base

from groundup.peft import apply_lora, apply_prompt_tuning, lora_layers, save_adapter


@pytest.fixture(scope="session")
def adapter_folders(tmp_path_factory) -> dict[str, str]:
    """Four LoRA adapters (different ranks and layers) and two soft prompts (3 and 5 virtual tokens)."""
    root = tmp_path_factory.mktemp("adapters")
    specs = [dict(r=2, alpha=4, target_modules=["q_proj", "v_proj"]),
             dict(r=4, alpha=4, target_modules=["v_proj", "down_proj"]),
             dict(r=3, alpha=9, target_modules=["o_proj", "up_proj", "q_proj"]),
             dict(r=1, alpha=2, target_modules=["k_proj", "gate_proj"])]
    out = {}
    for i, spec in enumerate(specs):
        model = apply_lora(base(), **spec)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.5)
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.5)
        out[f"lora{i}"] = str(save_adapter(model, root / f"lora{i}"))
    for i, n in enumerate((3, 5)):
        model = apply_prompt_tuning(base(), n)
        with torch.no_grad():
            model.embed.prompt_embeddings.normal_(0, 1.0, generator=torch.Generator().manual_seed(20 + i))
        out[f"soft{i}"] = str(save_adapter(model, root / f"soft{i}"))
    return out
