"""Weight-only quantization of a groundup model: int8 per output channel, int4 in groups, NF4/FP4 in blocks with
double quantization (nn/qlinear.py, nn/nf4.py).

    model = gu.from_pretrained(folder)
    quantize(model, "int4", group_size=32)   # in place; module names unchanged
    model.save_pretrained(out)               # config.json records it; gu.from_pretrained(out) reads it back
    quantize(model, "nf4")                   # QLoRA's base: saved in the bitsandbytes format transformers reads
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint.hf import from_pretrained_quantized
from ..nn.nf4 import BLOCKSIZES
from ..nn.qlinear import GROUP_SIZES, QUANTIZED, Int4Linear, Int8Linear, NF4Linear, quantizable
from ..nn.qspec import Int4Spec, Int8Spec, NF4Spec, QuantSpec, swap_in

METHODS = {"int8": 8, "int4": 4, "nf4": 4, "fp4": 4}


def plan(model: nn.Module, method: str = "int8", *, group_size: int = 64, include_head: bool = False,
         indivisible: str = "error", double_quant: bool = True,
         compute_dtype: torch.dtype = torch.bfloat16) -> QuantSpec:
    """Check a quantization of ``model`` (see quantize) and return its spec (nn/qspec.py). Changes nothing,
    except that a head to be quantized out of a tied embedding unties the config (the caller copies the
    weight)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    if getattr(model, "quantization", None):
        raise ValueError("the model is already quantized; load the float checkpoint to quantize it another way")
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("the model has LoRA adapters: merge them (merge_lora) before quantizing")
    bits, blocks = METHODS[method], method in ("nf4", "fp4")
    if blocks and group_size not in BLOCKSIZES:
        raise ValueError(f"group_size={group_size} must be one of {BLOCKSIZES} for {method}")
    if bits == 4 and not blocks and group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size} must be one of {GROUP_SIZES}")
    names = quantizable(model, include_head=include_head)
    if not names:
        raise ValueError("the model has no linear layers to quantize")
    if indivisible not in ("error", "int8"):
        raise ValueError(f"indivisible={indivisible!r} must be 'error' or 'int8'")
    odd = [n for n in names if bits == 4 and not blocks and model.get_submodule(n).in_features % group_size]
    if odd and indivisible == "error":
        width = model.get_submodule(odd[0]).in_features
        raise ValueError(f"{odd[0]}: group_size={group_size} does not divide its input width {width}; pick one of "
                         f"{', '.join(str(g) for g in GROUP_SIZES if width % g == 0) or 'none'}, or pass "
                         "indivisible='int8' to keep such layers in int8")
    if "lm_head" in names and getattr(getattr(model, "config", None), "tie_embeddings", False):
        model.config = model.config.replace(tie_embeddings=False)  # checks done
    if blocks:  # blocks run over the flattened weight: any width works
        return NF4Spec(names, quant_type=method, blocksize=group_size, double_quant=double_quant,
                       compute_dtype=str(compute_dtype).removeprefix("torch."))
    if bits == 8:
        return Int8Spec(names)
    return Int4Spec([n for n in names if n not in odd], group_size=group_size, int8_modules=odd)


def quantize(model: nn.Module, method: str = "int8", **options) -> nn.Module:
    """Replace the model's linear layers by weight-only quantized ones, in place, and return the model.

    ``method`` "int8" (absmax per output row), "int4" (asymmetric, ``group_size`` 32/64/128 inputs a group), or
    "nf4" / "fp4" (QLoRA's 4-bit levels over blocks of ``group_size`` values of the flattened weight, 64 by
    default; ``double_quant`` quantizes the block scales too; the products run in ``compute_dtype``);
    ``include_head`` quantizes the lm_head too; a tied one is untied first (the embedding stays float for the
    lookup, the head gets a quantized copy: decoding then reads 4 or 8 bits per head weight, not 16; the saved
    folder says tie_word_embeddings false). A layer whose input width the group size does not divide
    is an error (``indivisible="error"``), or stays in int8 (``"int8"``, as llama.cpp falls back to another type
    for such tensors). Everything is checked before the first layer changes.
    """
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    spec = plan(model, method, **options)
    if tied and not model.config.tie_embeddings:
        model.lm_head.weight = nn.Parameter(model.embed.weight.detach().clone(), requires_grad=False)
    return swap_in(model, spec)


def load_quantized(folder: str | Path, method: str = "nf4", *, dtype: torch.dtype | None = torch.bfloat16,
                   **options) -> nn.Module:
    """``from_pretrained(folder)`` then ``quantize(model, method, **options)`` without ever holding the float
    model: each linear weight is quantized as it is read (checkpoint/hf.from_pretrained_quantized), so a QLoRA
    base fits where its bf16 copy would not. ``dtype`` is that of the float parts (embeddings, norms) and of the
    weights before quantization (bf16, as QLoRA; None keeps the file's)."""
    return from_pretrained_quantized(folder, lambda model: plan(model, method, **options), dtype=dtype)


__all__ = ["GROUP_SIZES", "METHODS", "QUANTIZED", "Int4Linear", "Int8Linear", "NF4Linear", "load_quantized", "plan",
           "quantize"]
