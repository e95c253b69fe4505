"""Adapters (LoRA, IA3, prompt and prefix tuning) in the peft library's folder format: adapter_config.json
+ adapter_model.safetensors.

The tensors are named after the transformers module that carries them, e.g.
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``; groundup's module names translate
through the family's layout (checkpoint/families.py). A folder written here loads with
``peft.PeftModel.from_pretrained`` onto the matching transformers model, and one written by peft loads
here, with the same outputs either way (tests/peft).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoint.hf import module_name_from_hf, module_name_to_hf, state_dict_from_hf, state_dict_to_hf
from ..checkpoint.io import atomic_folder, read_json
from ..checkpoint.registry import family_of
from ..nn.qlinear import io_shape, is_linear
from ..utils.files import read_safetensors
from .ia3 import IA3Config, apply_ia3, ia3_layers
from .lora import LoraConfig, apply_lora, lora_layers, matches_targets, saved_module_names, train_whole
from .prefix import apply_prefix_tuning, prefix_of
from .prompt import apply_prompt_tuning, soft_prompt

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
        if is_linear(m) and name != "lm_head":
            try:
                everything.append(module_name_to_hf(cfg, name.removesuffix(".base_layer")))
            except ValueError:
                continue
    chosen = {n for n in everything if n.rsplit(".", 1)[-1] in leaves}
    return leaves if chosen <= set(hf_names) else sorted(hf_names)


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every adapter module of the model by name: LoRA and IA3 layers, a soft prompt, a prefix (empty for a
    plain model)."""
    soft, prefix = soft_prompt(model), prefix_of(model)
    return {**lora_layers(model), **ia3_layers(model), **({"embed": soft} if soft is not None else {}),
            **({"prefix_tuning": prefix} if prefix is not None else {})}


def _adapted(model: nn.Module) -> tuple[str, dict[str, nn.Module]]:
    """("LORA" or "IA3", the wrapped layers by name)."""
    lora, ia3 = lora_layers(model), ia3_layers(model)
    if lora and ia3:
        raise AdapterError("the model has both LoRA and IA3 layers; one adapter type per folder")
    if not lora and not ia3:
        raise AdapterError("the model has no adapter layers: apply_lora(model, ...) or apply_ia3(model, ...) first")
    return ("LORA", lora) if lora else ("IA3", ia3)


def _write(folder: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    (folder / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS),
              metadata={"format": "pt"})


def _write_prompt(model: nn.Module, folder: Path) -> None:
    soft, cfg = soft_prompt(model), model.config
    if soft.tasks != 1:
        raise AdapterError(f"the soft prompt holds {soft.tasks} tasks; peft's prompt-tuning folder holds one")
    meta = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": soft.n,
            "token_dim": cfg.d_model, "num_transformer_submodules": 1, "num_attention_heads": cfg.n_heads,
            "num_layers": cfg.n_layers, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None, "inference_mode": True, "modules_to_save": None,
            "base_model_name_or_path": None}
    _write(folder, meta, {"prompt_embeddings": soft.prompt_embeddings})


def _write_prefix(model: nn.Module, folder: Path) -> None:
    prefix, cfg = prefix_of(model), model.config
    meta = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": prefix.n,
            "token_dim": cfg.n_kv_heads * cfg.head_dim, "num_transformer_submodules": 1,
            "num_attention_heads": cfg.n_kv_heads, "num_layers": cfg.n_layers,
            "encoder_hidden_size": cfg.n_kv_heads * cfg.head_dim, "prefix_projection": False,
            "inference_mode": True, "modules_to_save": None, "base_model_name_or_path": None}
    # The MLP's output when reparameterised: what the model uses, and what peft saves.
    _write(folder, meta, {"prompt_embeddings": prefix.table()})


def write_adapter(model: nn.Module, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors into an existing folder (not atomic: see save_adapter)."""
    kinds = [k for k, on in (("soft prompt", soft_prompt(model) is not None), ("prefix", prefix_of(model) is not None),
                             ("adapter layers", bool(lora_layers(model) or ia3_layers(model)))) if on]
    if len(kinds) > 1:
        raise AdapterError(f"the model has a {' and a '.join(kinds)}; one adapter type per folder")
    if soft_prompt(model) is not None:
        return _write_prompt(model, folder)
    if prefix_of(model) is not None:
        return _write_prefix(model, folder)
    kind, layers = _adapted(model)
    if any(layer.merged for layer in layers.values()):
        raise AdapterError("the adapter is merged into the base weights: unmerge it before saving")
    cfg = model.config
    hf = {name: module_name_to_hf(cfg, name) for name in layers}
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if kind == "LORA":
            tensors[f"{PREFIX}{hf[name]}.lora_A.weight"] = layer.lora_A.weight
            tensors[f"{PREFIX}{hf[name]}.lora_B.weight"] = layer.lora_B.weight
        else:
            tensors[f"{PREFIX}{hf[name]}.ia3_l"] = layer.ia3_l
    task = {"causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}.get(cfg.arch, "FEATURE_EXTRACTION")
    # A and B keep their [r, in] / [out, r] shapes even on GPT-2's Conv1D layers; peft's fan_in_fan_out
    # only says the base weight is stored [in, out] (it transposes when merging).
    meta = {"peft_type": kind, "task_type": task, "target_modules": _hf_targets(model, list(hf.values())),
            "fan_in_fan_out": family_of(cfg).conv1d, "inference_mode": True, "modules_to_save": None,
            "base_model_name_or_path": None}
    if kind == "LORA":
        lcfg = model.lora_config
        meta.update({"r": lcfg.r, "lora_alpha": lcfg.alpha, "lora_dropout": lcfg.dropout, "bias": "none",
                     "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
                     "init_lora_weights": True, "layers_to_transform": None})
    else:
        ff = [hf[n] for n, layer in layers.items() if layer.feedforward]
        meta.update({"feedforward_modules": _hf_targets(model, ff) if ff else [], "init_ia3_weights": True})
    saved = _saved_to_hf(model)
    if saved:
        tensors.update({PREFIX + k: t for k, t in saved.items()})
        meta["modules_to_save"] = _modules_of(saved)  # full HF module names
    _write(folder, meta, tensors)


def _saved_to_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``model.modules_to_save`` under their HF names, as peft saves them (its
    ``.modules_to_save.default`` part dropped): ``model.embed_tokens.weight``."""
    names = model.modules_to_save
    own = {f"{n}.{leaf}": p for n in names for leaf, p in model.get_submodule(n).named_parameters()}
    try:
        return state_dict_to_hf(own, model.config) if own else {}
    except (ValueError, KeyError) as e:  # a fused q/k/v half, or a module outside the family's layout
        raise AdapterError(f"modules_to_save {names}: the weights have no name in the {model.config.family} "
                           f"layout ({e}); save whole HF modules (e.g. embed, lm_head, norm)") from e


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write the model's LoRA adapter (not the base weights) as a peft folder; atomic (temp folder, then
    rename), so an existing adapter survives a failed write."""
    return atomic_folder(folder, lambda tmp: write_adapter(model, tmp))


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def _check_config(meta: dict, path: Path) -> None:
    if meta.get("peft_type") not in ("LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING"):
        raise AdapterError(f"{path}: peft_type={meta.get('peft_type')!r}; this loader reads LORA, IA3, "
                           "PROMPT_TUNING and PREFIX_TUNING adapters")
    for key, ok in (("use_dora", False), ("bias", "none")):
        if meta.get(key, ok) != ok:
            raise AdapterError(f"{path}: {key}={meta[key]!r} is not supported (only {key}={ok!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        if meta.get(key):
            raise AdapterError(f"{path}: a per-module {key} is not supported; one rank and alpha for all layers")
    if meta.get("modules_to_save") and meta.get("peft_type") not in ("LORA", "IA3"):
        raise AdapterError(f"{path}: modules_to_save={meta['modules_to_save']!r} (fully trained extra modules) is "
                           "supported with LORA and IA3 adapters only")


def _load_prefix(model: nn.Module, meta: dict, w_path: Path, into_existing: bool) -> nn.Module:
    tensors = read_safetensors(w_path, error=AdapterError)
    cfg, n = model.config, int(meta["num_virtual_tokens"])
    width = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim
    t = tensors.get("prompt_embeddings")
    if t is None or tuple(t.shape) != (n, width):
        shape = None if t is None else tuple(t.shape)
        raise AdapterError(f"{w_path}: prompt_embeddings has shape {shape}; this model needs ({n}, {width}) = "
                           f"(virtual tokens, layers x 2 x kv heads x head dim): it was trained on a different "
                           "base model")
    if not into_existing:
        apply_prefix_tuning(model, n)  # the saved table is final: no reparameterisation to rebuild
    prefix = prefix_of(model)
    if prefix.projection:
        raise AdapterError(f"{w_path}: cannot load a saved prefix into a reparameterised one; resume without "
                           "the projection")
    with torch.no_grad():
        prefix.embedding.weight.copy_(t)
    return model


def _load_prompt(model: nn.Module, meta: dict, w_path: Path, into_existing: bool) -> nn.Module:
    tensors = read_safetensors(w_path, error=AdapterError)
    if set(tensors) != {"prompt_embeddings"}:
        raise AdapterError(f"{w_path}: a prompt-tuning adapter holds one tensor, prompt_embeddings; found "
                           f"{sorted(tensors)}")
    t, n = tensors["prompt_embeddings"], int(meta["num_virtual_tokens"])
    if meta.get("num_transformer_submodules", 1) != 1:
        raise AdapterError(f"{w_path}: num_transformer_submodules={meta['num_transformer_submodules']}: only "
                           "decoder-only prompts (1) are supported")
    if tuple(t.shape) != (n, model.config.d_model):
        raise AdapterError(f"{w_path}: prompt_embeddings has shape {tuple(t.shape)}; this model needs ({n}, "
                           f"{model.config.d_model}): it was trained on a different base model")
    if not into_existing:
        apply_prompt_tuning(model, n)
    soft = soft_prompt(model)
    if soft is None or soft.prompt_embeddings.shape != t.shape:
        raise AdapterError(f"{w_path}: the model's soft prompt does not have {n} virtual tokens")
    with torch.no_grad():
        soft.prompt_embeddings.copy_(t)
    return model


def _regex(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def _modules_of(params: dict[str, torch.Tensor]) -> list[str]:
    """The modules holding these parameters ("embed.weight" -> "embed"), sorted."""
    return sorted({k.rpartition(".")[0] for k in params})


@dataclass
class AdapterFile:
    """A LoRA or IA3 folder read and checked against a model: the tensors by groundup module name."""

    kind: str  # "LORA" | "IA3"
    meta: dict
    parts: dict[str, dict[str, torch.Tensor]]  # module -> {"lora_A", "lora_B"} or {"ia3_l"}
    feedforward: set[str]  # IA3 modules scaled on their input
    path: Path
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save: groundup parameter -> tensor

    @property
    def saved_modules(self) -> list[str]:
        return _modules_of(self.saved)

    @property
    def r(self) -> int:
        return int(self.meta.get("r", 0))

    @property
    def alpha(self) -> float:
        """LoRA alpha such that alpha / r is the scaling (rsLoRA's alpha / sqrt(r) folded in)."""
        alpha = float(self.meta["lora_alpha"])
        return alpha * self.r**0.5 if self.meta.get("use_rslora") else alpha  # (Kalajdzievski, 2023)


def read_adapter(model: nn.Module, folder: str | Path) -> AdapterFile:
    """Read a peft LoRA or IA3 folder and check every tensor against ``model`` (which is not changed): the
    adapted modules must exist and each tensor (LoRA's A [r, in] and B [out, r], IA3's [out, 1] or [1, in])
    must fit its layer, else AdapterError naming the tensor (an adapter for a different base model)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG, folder / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise AdapterError(f"{folder}: a peft adapter folder holds {CONFIG} and {WEIGHTS}")
    meta = read_json(cfg_path)
    _check_config(meta, cfg_path)
    kind = meta["peft_type"]
    if kind in ("PROMPT_TUNING", "PREFIX_TUNING"):
        raise AdapterError(f"{folder}: a {kind} folder has no layers to read (load_adapter loads it)")
    cfg = model.config
    pat = re.compile(rf"{re.escape(PREFIX)}(.+)\.(lora_A|lora_B|ia3_l)(?:\.[^.]+)?(?:\.weight)?")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    hf_of: dict[str, str] = {}
    whole: dict[str, torch.Tensor] = {}  # modules_to_save weights, by HF name
    for key, t in read_safetensors(w_path, error=AdapterError).items():
        m = pat.fullmatch(key)
        if m is None and meta.get("modules_to_save") and key.startswith(PREFIX):
            whole[key.removeprefix(PREFIX)] = t
            continue
        if m is None or (m.group(2) == "ia3_l") != (kind == "IA3"):
            raise AdapterError(f"{w_path}: tensor {key} is not a {kind} weight")
        name = module_name_from_hf(cfg, m.group(1))
        if name is None or ".attn.qkv" in name or ".mlp.gate_up" in name:
            what = ("no module of this model" if name is None else
                    "a fused q/k/v matrix, which groundup keeps as three" if ".attn.qkv" in name else
                    "a fused gate/up matrix, which groundup keeps as two")
            raise AdapterError(f"{w_path}: {key} adapts {m.group(1)}: {what}; adapt the unfused layers (o_proj, "
                               "down_proj) instead")
        parts.setdefault(name, {})[m.group(2)] = t
        hf_of[name] = m.group(1)
    modules = dict(model.named_modules())
    r = int(meta.get("r", 0))
    ff = {n for n in parts if kind == "IA3" and matches_targets(meta.get("feedforward_modules"), hf_of[n])}
    for name, pair in parts.items():
        if name not in modules:
            raise AdapterError(f"{w_path}: the adapter has layer {name}, which this model ({cfg.n_layers} layers) "
                               "lacks: it was trained on a different base model")
        out_f, in_f = io_shape(modules[name])
        want = ({"lora_A": (r, in_f), "lora_B": (out_f, r)} if kind == "LORA"
                else {"ia3_l": (1, in_f) if name in ff else (out_f, 1)})
        if set(pair) != set(want):
            raise AdapterError(f"{w_path}: {name} has {sorted(pair)}, expected {sorted(want)}")
        for part, shape in want.items():
            if tuple(pair[part].shape) != shape:
                raise AdapterError(f"{w_path}: {name}.{part} has shape {tuple(pair[part].shape)}; this model needs "
                                   f"{shape}: it was trained on a different base model")
    return AdapterFile(kind, meta, parts, ff, w_path, _read_saved(model, whole, sorted(parts), w_path))


def _read_saved(model: nn.Module, whole: dict[str, torch.Tensor], targets: list[str],
                w_path: Path) -> dict[str, torch.Tensor]:
    """modules_to_save tensors (HF names) -> groundup parameter names, each checked against the model: every
    parameter of a saved module present with its shape, and the modules allowed (saved_module_names)."""
    if not whole:
        return {}
    try:
        saved = state_dict_from_hf(whole, model.config)
    except ValueError as e:
        raise AdapterError(f"{w_path}: a modules_to_save weight is not part of this model: {e}") from e
    modules = _modules_of(saved)
    try:
        saved_module_names(model, _regex(modules), targets)
    except ValueError as e:
        raise AdapterError(f"{w_path}: {e}") from e
    for name in modules:
        own = {f"{name}.{leaf}": p for leaf, p in model.get_submodule(name).named_parameters()}
        mine = {k: t for k, t in saved.items() if k.rpartition(".")[0] == name}
        if set(own) != set(mine):
            raise AdapterError(f"{w_path}: modules_to_save {name} holds {sorted(mine)}; this model's has "
                               f"{sorted(own)}")
        for k, t in mine.items():
            if t.shape != own[k].shape:
                raise AdapterError(f"{w_path}: {k} has shape {tuple(t.shape)}; this model needs "
                                   f"{tuple(own[k].shape)}: it was trained on a different base model")
    return saved


def load_adapter(model: nn.Module, folder: str | Path, *, into_existing: bool = False) -> nn.Module:
    """Wrap ``model``'s layers named in a peft LoRA or IA3 folder and load the adapter weights, or give it
    the soft prompt of a prompt-tuning folder (in place). Everything is checked (read_adapter) before the
    model changes. ``into_existing`` copies the weights into the adapter the model already has (resuming a
    run) instead of adding one."""
    folder = Path(folder)
    kind = read_json(folder / CONFIG).get("peft_type") if (folder / CONFIG).is_file() else None
    if kind in ("PROMPT_TUNING", "PREFIX_TUNING") and (folder / WEIGHTS).is_file():
        meta = read_json(folder / CONFIG)
        _check_config(meta, folder / CONFIG)
        load = _load_prompt if kind == "PROMPT_TUNING" else _load_prefix
        return load(model, meta, folder / WEIGHTS, into_existing)
    file = read_adapter(model, folder)
    names = sorted(file.parts)
    existing = lora_layers(model) if file.kind == "LORA" else ia3_layers(model)
    if into_existing:
        if sorted(existing) != names:
            raise AdapterError(f"{file.path}: adapts {len(names)} layers, not the model's {len(existing)}")
        own = model.modules_to_save
        if file.saved_modules != sorted(own):
            raise AdapterError(f"{file.path}: saves modules {file.saved_modules}, not the model's {own}")
    elif file.kind == "LORA":
        apply_lora(model, LoraConfig(r=file.r, alpha=file.alpha, dropout=float(file.meta.get("lora_dropout", 0.0)),
                                     target_modules=_regex(names)))
    else:
        apply_ia3(model, IA3Config(target_modules=_regex(names), feedforward_modules=_regex(sorted(file.feedforward))))
    layers = lora_layers(model) if file.kind == "LORA" else ia3_layers(model)
    with torch.no_grad():
        for name, pair in file.parts.items():
            for part, t in pair.items():
                target = getattr(layers[name], part)
                (target.weight if isinstance(target, nn.Linear) else target).copy_(t)
        if file.saved:
            train_whole(model, file.saved_modules)
            params = dict(model.named_parameters())
            for k, t in file.saved.items():
                params[k].copy_(t)
    return model
