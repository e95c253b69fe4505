"""The translation between a family's HF layout and groundup: config.json <-> Config and HF tensor / module names
<-> groundup's, through the family registry (registry.py). Pure functions of dicts and tensors: the folder
readers and writers (hf.py, vision.py, flamingo.py, bnb.py) and peft's adapter format build on them.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import Config
from .io import CheckpointError
from .layout import qkv_join, qkv_split
from .registry import FAMILIES, OPTIONAL_FIELDS, REFUSED, UnsupportedConfig, family_of

# config.json's special token ids, which are named Config fields
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# other config.json fields carried through a round trip in Config.extra
PASSTHROUGH = ("forced_eos_token_id", "id2label")


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)"))


def _rename(key: str, pairs: list[tuple[re.Pattern[str], str]]) -> str | None:
    module, _, leaf = key.rpartition(".")
    for pat, target in pairs:
        m = pat.fullmatch(module)
        if m:
            return target.format(**m.groupdict()) + "." + leaf
    return None


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> Config:
    """The Config for an HF config.json dict (raises naming the unsupported field)."""
    model_type = hf.get("model_type")
    if model_type in REFUSED:
        raise CheckpointError(f"{source}: model_type={model_type!r}: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{source}: model_type={model_type!r} is not a supported family; supported: "
                              f"{', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    try:
        kwargs = family.to_config(hf)
    except UnsupportedConfig as err:
        raise CheckpointError(f"{source} ({model_type}): {err}") from None
    except KeyError as err:
        raise CheckpointError(f"{source} ({model_type}): required field {err.args[0]!r} is missing") from None
    if kwargs.get("n_experts"):  # every transformers MoE pools f and P over the layers in its balance loss
        kwargs.setdefault("balance_scope", "stack")  # (groundup's own layout carries its field)
    extra = {k: hf[k] for k in PASSTHROUGH if k in hf}
    ids = {k: hf[k] for k in TOKEN_IDS if hf.get(k) is not None}
    try:
        return Config(**kwargs, **ids, family=model_type, name=hf.get("_name_or_path", "") or "", extra=extra)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def config_to_hf(cfg: Config, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """An HF config.json dict that rebuilds the same architecture in transformers."""
    family = family_of(cfg)
    if cfg.family == "llama" and cfg.sliding_window:
        raise CheckpointError("family='llama' has no sliding window in transformers; use family='mistral'")
    held = [f"{n}={getattr(cfg, n)!r}" for n in OPTIONAL_FIELDS
            if getattr(cfg, n) is not None and n not in family.expresses]
    if held:
        raise CheckpointError(f"Config.family={cfg.family!r} cannot hold {', '.join(held)}: its HF layout has no such "
                              "field; pick a family that has (gemma2, gemma3_text) or leave the field None")
    if cfg.arch != family.arch:
        raise CheckpointError(f"Config.family={cfg.family!r} holds arch={family.arch!r} models, but the config has "
                              f"arch={cfg.arch!r}; pick a family of that arch")
    try:
        body = family.to_hf(cfg)
        architecture = family.architecture_of(cfg)
    except UnsupportedConfig as err:
        native = "groundup_seq2seq" if cfg.arch == "seq2seq" else "groundup"
        raise CheckpointError(f"cannot write this config as {cfg.family}: {err}; family={native!r} saves any "
                              "config in groundup's own layout (which transformers does not read)") from None
    return {"architectures": [architecture], "model_type": family.model_type, "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_embeddings, "dtype": str(dtype).removeprefix("torch."),
            **{k: getattr(cfg, k) for k in TOKEN_IDS if getattr(cfg, k) is not None}, **cfg.extra, **body}


def state_dict_from_hf(tensors: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Rename HF tensors to groundup names, split fused q/k/v, transpose GPT-2 Conv1D weights."""
    family = family_of(cfg)
    pairs = [(_pattern(hf), gu) for gu, hf in family.keys(cfg)]
    exact = {hf: gu for gu, hf in family.exact}
    ignored = [re.compile(p) for p in family.ignored]
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, t in tensors.items():
        if name in family.row_vectors:
            t = t.reshape(-1)  # [1, N] -> [N]
        gu = exact.get(name) or _rename(name, pairs)
        if gu is None:
            if not any(p.fullmatch(name) for p in ignored):
                unexpected.append(name)
            continue
        if family.conv1d and t.dim() == 2 and gu.startswith("blocks."):
            t = t.t()
        out[gu] = t
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensor(s) that a {cfg.family} model does not use: "
                              f"{', '.join(sorted(unexpected)[:20])}")
    if family.qkv_groups is not None:
        groups = family.qkv_groups(cfg)
        for name in [n for n in out if ".attn.qkv." in n]:
            prefix, leaf = name.split(".attn.qkv.")
            t = out.pop(name)
            expected = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
            if t.shape[0] != expected:
                raise CheckpointError(f"{name}: fused q/k/v has {t.shape[0]} rows, expected {expected} "
                                      f"(= (n_heads + 2 n_kv_heads) x head_dim)")
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), qkv_split(t, cfg, groups), strict=True):
                out[f"{prefix}.attn.{proj}.{leaf}"] = part
    if family.fused_gate_up:
        for name in [n for n in out if ".mlp.gate_up." in n]:
            prefix, leaf = name.split(".mlp.gate_up.")
            t = out.pop(name)
            if t.shape[0] != 2 * cfg.d_ff:
                raise CheckpointError(f"{name}: fused gate/up has {t.shape[0]} rows, expected 2 x d_ff = "
                                      f"{2 * cfg.d_ff}")
            out[f"{prefix}.mlp.gate_proj.{leaf}"], out[f"{prefix}.mlp.up_proj.{leaf}"] = t.chunk(2, dim=0)
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """groundup state dict -> HF tensor names (the inverse of state_dict_from_hf)."""
    family = family_of(cfg)
    state = dict(state)
    if family.qkv_groups is not None:
        groups = family.qkv_groups(cfg)
        for name in [n for n in state if ".attn.q_proj." in n]:
            prefix, leaf = name.split(".attn.q_proj.")
            q, k, v = (state.pop(f"{prefix}.attn.{p}.{leaf}") for p in ("q_proj", "k_proj", "v_proj"))
            state[f"{prefix}.attn.qkv.{leaf}"] = qkv_join(q, k, v, cfg, groups)
    if family.fused_gate_up:
        for name in [n for n in state if ".mlp.gate_proj." in n]:
            prefix, leaf = name.split(".mlp.gate_proj.")
            gate, up = state.pop(name), state.pop(f"{prefix}.mlp.up_proj.{leaf}")
            state[f"{prefix}.mlp.gate_up.{leaf}"] = torch.cat([gate, up], dim=0)
    pairs = [(_pattern(gu), hf) for gu, hf in family.keys(cfg)]
    exact = dict(family.exact)
    out = {}
    for name, t in state.items():
        hf = exact.get(name) or _rename(name, pairs)
        if hf is None:
            raise CheckpointError(f"tensor {name} has no name in the {cfg.family} layout")
        if family.conv1d and t.dim() == 2 and name.startswith("blocks."):
            t = t.t()
        if hf in family.row_vectors:
            t = t[None]  # [N] -> [1, N]
        out[hf] = t.contiguous()
    return out


def module_name_to_hf(cfg: Config, name: str) -> str:
    """groundup module name (``blocks.3.attn.q_proj``) -> the HF module holding the same weight
    (``model.layers.3.self_attn.q_proj``); adapters (LoRA) are named after it. A q/k/v projection of a
    family that fuses them into one HF matrix has no HF module of its own: CheckpointError."""
    family = family_of(cfg)
    if family.qkv_groups is not None and re.search(r"\.attn\.[qkv]_proj$", name):
        raise CheckpointError(f"{name}: {cfg.family} stores q, k and v as one fused matrix, so an adapter on "
                              "it alone has no HF name; adapt the other projections (e.g. o_proj, the MLP)")
    if family.fused_gate_up and re.search(r"\.mlp\.(gate|up)_proj$", name):
        raise CheckpointError(f"{name}: {cfg.family} stores the gate and up projections as one fused matrix "
                              "(gate_up_proj), so an adapter on one of them has no HF name; adapt down_proj or "
                              "the attention")
    for gu, hf in family.keys(cfg):
        m = _pattern(gu).fullmatch(name)
        if m:
            return hf.format(**m.groupdict())
    raise CheckpointError(f"module {name} has no name in the {cfg.family} layout")


def module_name_from_hf(cfg: Config, name: str) -> str | None:
    """The inverse of module_name_to_hf; None for an HF module groundup does not have."""
    for gu, hf in family_of(cfg).keys(cfg):
        m = _pattern(hf).fullmatch(name)
        if m:
            return gu.format(**m.groupdict())
    return None
