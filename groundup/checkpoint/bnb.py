"""The bitsandbytes 4-bit folder format of transformers (``BitsAndBytesConfig(load_in_4bit=True)`` then
``save_pretrained``), in and out: groundup's NF4 / FP4 layers (nn/qlinear.NF4Linear) are saved in it, so a
folder quantized here loads in transformers and one quantized there loads here.

config.json holds ``quantization_config`` with ``quant_method: "bitsandbytes"``, ``load_in_4bit``,
``bnb_4bit_quant_type``, ``bnb_4bit_use_double_quant``, ``bnb_4bit_compute_dtype`` and
``llm_int8_skip_modules`` (the linear layers left in float). Per quantized layer X the safetensors hold
``X.weight`` (the packed codes, uint8 [(out x in + 1) / 2, 1]), ``X.weight.absmax``, ``X.weight.quant_map`` and,
double-quantized, ``X.weight.nested_absmax`` and ``X.weight.nested_quant_map``; the rest of the state (quant
type, block size, the original dtype and shape, the nested block size and offset) is a JSON object stored as the
bytes of a uint8 tensor, ``X.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from ..config import Config
from ..nn.nf4 import BLOCKSIZES, NESTED_BLOCKSIZE, QUANT_TYPES
from ..nn.qspec import NF4Spec
from .io import CheckpointError
from .registry import family_of

# NF4Linear's own tensor names -> the suffix after the module name in the file
_FILE_NAMES = {"absmax": "weight.absmax", "quant_map": "weight.quant_map", "nested_absmax": "weight.nested_absmax",
               "nested_quant_map": "weight.nested_quant_map"}
_STATE = re.compile(r"(.+)\.weight\.quant_state\.bitsandbytes__(\w+)")


def is_bnb(quantization_config: dict[str, Any] | None) -> bool:
    return bool(quantization_config) and quantization_config.get("quant_method") == "bitsandbytes"


def check_family(cfg: Config, where: str, what: str = "4-bit bitsandbytes") -> None:
    """Refuse a family whose HF layout fuses or transposes matrices: a packed quantized matrix cannot be cut or
    joined into groundup's separate projections."""
    family = family_of(cfg)
    if family.qkv_groups is not None or family.fused_gate_up or family.conv1d:
        raise CheckpointError(f"{where}: {what} layers of {cfg.family} fuse or transpose matrices (q/k/v, gate/up "
                              "or Conv1D), which a packed quantized tensor cannot be split into; quantize with "
                              "groundup to int4/int8 instead, or pick a family with separate projections (llama, "
                              "mistral, qwen2, gemma ...)")


def spec_from_file(qc: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> NF4Spec:
    """The NF4 spec (nn/qspec.py) of a transformers bitsandbytes folder: checked against the
    per-layer states; ``modules`` are HF module names here (the caller translates them)."""
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        raise CheckpointError(f"{where}: quantization_config.load_in_8bit (bitsandbytes LLM.int8) is not supported; "
                              "groundup reads bitsandbytes 4-bit folders (load_in_4bit) and its own int8")
    if not (qc.get("load_in_4bit") or qc.get("_load_in_4bit")):
        raise CheckpointError(f"{where}: quantization_config with quant_method 'bitsandbytes' says neither "
                              "load_in_4bit nor load_in_8bit")
    quant_type = qc.get("bnb_4bit_quant_type", "fp4")
    if quant_type not in QUANT_TYPES:
        raise CheckpointError(f"{where}: quantization_config.bnb_4bit_quant_type={quant_type!r} must be one of "
                              f"{', '.join(QUANT_TYPES)}")
    if qc.get("bnb_4bit_quant_storage", "uint8") != "uint8":
        raise CheckpointError(f"{where}: quantization_config.bnb_4bit_quant_storage="
                              f"{qc['bnb_4bit_quant_storage']!r} is not supported (only uint8)")
    compute = qc.get("bnb_4bit_compute_dtype") or "float32"
    if not isinstance(getattr(torch, str(compute), None), torch.dtype):
        raise CheckpointError(f"{where}: quantization_config.bnb_4bit_compute_dtype={compute!r} is not a dtype")
    states = {m.group(1): (m.group(2), name) for name in tensors if (m := _STATE.fullmatch(name))}
    if not states:
        raise CheckpointError(f"{where}: a bitsandbytes 4-bit folder without any *.weight.quant_state.bitsandbytes__* "
                              "tensor (was it saved before quantization?)")
    blocksizes, doubles = set(), set()
    for module, (kind, name) in states.items():
        meta = _read_state(tensors[name], name, where)
        if kind != quant_type or meta.get("quant_type") != quant_type:
            raise CheckpointError(f"{where}: {name} is {meta.get('quant_type')}, the config says {quant_type}")
        blocksizes.add(meta.get("blocksize"))
        doubles.add(f"{module}.weight.nested_absmax" in tensors)
    if len(blocksizes) != 1 or next(iter(blocksizes)) not in BLOCKSIZES or len(doubles) != 1:
        raise CheckpointError(f"{where}: the 4-bit layers mix block sizes {sorted(map(str, blocksizes))} or double "
                              "quantization; groundup keeps one setting per model")
    return NF4Spec(sorted(states), quant_type=quant_type, blocksize=blocksizes.pop(), double_quant=doubles.pop(),
                   compute_dtype=str(compute))


def _read_state(t: torch.Tensor, name: str, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(bytes(t.to(torch.uint8).tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}: {name} is not the JSON quant state bitsandbytes writes ({err})") from None
    if meta.get("nested_blocksize", NESTED_BLOCKSIZE) != NESTED_BLOCKSIZE:
        raise CheckpointError(f"{where}: {name}: nested_blocksize={meta['nested_blocksize']} is not supported "
                              f"(only {NESTED_BLOCKSIZE}, what bitsandbytes writes)")
    return meta


def from_file(tensors: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """File tensors -> the same with NF4Linear's tensor names (``X.absmax``, ``X.nested_offset`` ...), still
    under HF module names; and per quantized HF module its JSON state (shape, dtype)."""
    out = dict(tensors)
    metas: dict[str, dict] = {}
    for name in [n for n in tensors if _STATE.fullmatch(n)]:
        module = _STATE.fullmatch(name).group(1)
        meta = metas[module] = _read_state(out.pop(name), name, where)
        for own, suffix in _FILE_NAMES.items():
            if f"{module}.{suffix}" in out:
                out[f"{module}.{own}"] = out.pop(f"{module}.{suffix}")
        if "nested_offset" in meta:
            out[f"{module}.nested_offset"] = torch.tensor(float(meta["nested_offset"]), dtype=torch.float32)
    return out, metas


def to_file(tensors: dict[str, torch.Tensor], layers: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The inverse of from_file: ``layers`` maps each HF module name to its NF4Linear."""
    out = dict(tensors)
    for module, layer in layers.items():
        for own, suffix in _FILE_NAMES.items():
            if f"{module}.{own}" in out:
                out[f"{module}.{suffix}"] = out.pop(f"{module}.{own}")
        meta = {"quant_type": layer.quant_type, "blocksize": layer.blocksize,
                "dtype": str(layer.weight_dtype).removeprefix("torch."),
                "shape": [layer.out_features, layer.in_features]}
        if layer.double_quant:
            meta |= {"nested_blocksize": NESTED_BLOCKSIZE, "nested_dtype": "float32",
                     "nested_offset": out.pop(f"{module}.nested_offset").item()}
        blob = list(json.dumps(meta).encode())
        out[f"{module}.weight.quant_state.bitsandbytes__{layer.quant_type}"] = torch.tensor(blob, dtype=torch.uint8)
    return out


def config_for(spec: NF4Spec, float_linears: list[str]) -> dict[str, Any]:
    """quantization_config as transformers' BitsAndBytesConfig writes it; ``float_linears`` (HF names) are the
    linear layers left unquantized, which transformers must be told to skip."""
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": spec.quant_type, "bnb_4bit_use_double_quant": spec.double_quant,
            "bnb_4bit_compute_dtype": spec.compute_dtype, "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": float_linears or None, "llm_int8_threshold": 6.0,
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}
