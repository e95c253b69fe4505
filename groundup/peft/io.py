"""Adapters in the peft library's folder format: adapter_config.json + adapter_model.safetensors.

The tensors are named after the transformers module that carries them, e.g.
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``; groundup's module names translate
through the family's layout (checkpoint/families.py). A folder written here loads with
``peft.PeftModel.from_pretrained`` onto the matching transformers model, and one written by peft loads
here, with the same outputs either way (tests/peft).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint.families import FAMILIES
from ..checkpoint.hf import module_name_from_hf, module_name_to_hf
from ..checkpoint.io import atomic_folder, read_json
from .lora import LoraConfig, apply_lora, lora_layers

PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter folder that cannot be loaded onto this model."""


def _hf_targets(model: nn.Module, hf_names: list[str]) -> list[str]:
    """peft target_modules for exactly these HF modules: their last name parts when those pick out no other
    linear layer of the model, else the full names (peft matches by suffix either way)."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in hf_names})
    cfg = model.config
    everything = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "lm_head":
            try:
                everything.append(module_name_to_hf(cfg, name.removesuffix(".base_layer")))
            except ValueError:
                continue
    chosen = {n for n in everything if n.rsplit(".", 1)[-1] in leaves}
    return leaves if chosen <= set(hf_names) else sorted(hf_names)


def write_adapter(model: nn.Module, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors into an existing folder (not atomic: see save_adapter)."""
    layers = lora_layers(model)
    if not layers:
        raise AdapterError("the model has no LoRA layers: apply_lora(model, ...) first")
    if any(layer.merged for layer in layers.values()):
        raise AdapterError("the adapter is merged into the base weights: unmerge_lora(model) before saving it")
    cfg, lcfg = model.config, model.lora_config
    tensors, hf_names = {}, []
    # A and B keep their [r, in] / [out, r] shapes even on GPT-2's Conv1D layers; peft's fan_in_fan_out
    # only says the base weight is stored [in, out] (it transposes the update when merging).
    for name, layer in layers.items():
        hf = module_name_to_hf(cfg, name)
        hf_names.append(hf)
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous()
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous()
    task = {"causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}.get(cfg.arch, "FEATURE_EXTRACTION")
    meta = {"peft_type": "LORA", "task_type": task, "r": lcfg.r, "lora_alpha": lcfg.alpha,
            "lora_dropout": lcfg.dropout, "target_modules": _hf_targets(model, hf_names), "bias": "none",
            "fan_in_fan_out": FAMILIES[cfg.family].conv1d, "inference_mode": True, "use_rslora": False,
            "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "init_lora_weights": True, "layers_to_transform": None, "base_model_name_or_path": None}

    (folder / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write the model's LoRA adapter (not the base weights) as a peft folder; atomic (temp folder, then
    rename), so an existing adapter survives a failed write."""
    return atomic_folder(folder, lambda tmp: write_adapter(model, tmp))


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def _check_config(meta: dict, path: Path) -> None:
    if meta.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type={meta.get('peft_type')!r}; this loader reads LORA adapters")
    for key, ok in (("use_dora", False), ("bias", "none")):
        if meta.get(key, ok) != ok:
            raise AdapterError(f"{path}: {key}={meta[key]!r} is not supported (only {key}={ok!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        if meta.get(key):
            raise AdapterError(f"{path}: a per-module {key} is not supported; one rank and alpha for all layers")
    if meta.get("modules_to_save"):
        raise AdapterError(f"{path}: modules_to_save={meta['modules_to_save']!r} (fully trained extra modules) is "
                           "not supported")


def load_adapter(model: nn.Module, folder: str | Path, *, into_existing: bool = False) -> nn.Module:
    """Wrap ``model``'s layers named in a peft LoRA folder and load the adapter weights (in place).

    Everything is checked before the model changes: the folder's files, the config's options, that every
    adapted module exists in this model, and that each A [r, in] and B [out, r] fits its layer (an adapter
    trained on a different base model fails here, naming the tensor). ``into_existing`` copies the
    weights into LoRA layers the model already has (resuming a run) instead of adding layers."""
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG, folder / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise AdapterError(f"{folder}: a peft adapter folder holds {CONFIG} and {WEIGHTS}")
    meta = read_json(cfg_path)
    _check_config(meta, cfg_path)
    tensors = load_file(str(w_path))
    r = int(meta["r"])
    scale_alpha = float(meta["lora_alpha"])
    if meta.get("use_rslora"):  # rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023)
        scale_alpha = scale_alpha / r**0.5 * r  # LoraLinear divides by r
    cfg = model.config
    weights: dict[str, dict[str, torch.Tensor]] = {}
    pat = re.compile(rf"{re.escape(PREFIX)}(.+)\.lora_([AB])(?:\.[^.]+)?\.weight")
    for key, t in tensors.items():
        m = pat.fullmatch(key)
        if m is None:
            raise AdapterError(f"{w_path}: tensor {key} is not a LoRA A/B weight")
        name = module_name_from_hf(cfg, m.group(1))
        if name is None or ".attn.qkv" in name:
            what = "a fused q/k/v matrix, which groundup keeps as three" if name else "no module of this model"
            raise AdapterError(f"{w_path}: {key} adapts {m.group(1)}: {what}")
        weights.setdefault(name, {})[m.group(2)] = t
    modules = dict(model.named_modules())
    for name, pair in weights.items():
        if name not in modules:
            raise AdapterError(f"{w_path}: the adapter has layer {name}, which this model ({cfg.n_layers} layers) "
                               "lacks: it was trained on a different base model")
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{w_path}: {name} has lora_{'A' if 'A' in pair else 'B'} without its partner")
        out_f, in_f = modules[name].weight.shape
        for part, want in (("A", (r, in_f)), ("B", (out_f, r))):
            if tuple(pair[part].shape) != want:
                raise AdapterError(f"{w_path}: {name}.lora_{part} has shape {tuple(pair[part].shape)}; this model "
                                   f"needs {want} (r={r}): it was trained on a different base model")
    names = sorted(weights)
    if into_existing:
        if sorted(lora_layers(model)) != names:
            raise AdapterError(f"{w_path}: adapts {len(names)} layers, not the model's {len(lora_layers(model))}")
    else:
        apply_lora(model, LoraConfig(r=r, alpha=scale_alpha, dropout=float(meta.get("lora_dropout", 0.0)),
                                     target_modules="|".join(re.escape(n) for n in names)))
    layers = lora_layers(model)
    with torch.no_grad():
        for name, pair in weights.items():
            layers[name].lora_A.weight.copy_(pair["A"])
            layers[name].lora_B.weight.copy_(pair["B"])
    return model
