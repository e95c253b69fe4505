"""BitFit: train the biases only (Ben Zaken et al., 2022, "BitFit: Simple Parameter-efficient Fine-tuning
for Transformer-based Masked Language-models"). No new parameters: the model keeps its shape and speed,
and a checkpoint is an ordinary model folder. Models without biases (Llama, Mistral) cannot use it."""

from __future__ import annotations

from torch import nn


def apply_bitfit(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the biases (in place); ValueError if the model has none."""
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        family = getattr(getattr(model, "config", None), "family", "this")
        raise ValueError(f"BitFit trains biases, and the {family} model has none (bias-free projections and "
                         "norms); use LoRA or IA3, or a model with biases such as gpt2")
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".bias"))
    return model
