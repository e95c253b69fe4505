"""Hugging Face folders in and out: config.json + safetensors <-> Config + groundup state dict.

Local folders only (no hub, no network) and safetensors only (no pickle). Every failure names the file,
tensor or field and says what would fix it, before any large allocation.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models import meta_model
from ..nn.qlinear import NF4Linear, layer_spec, make_quantized, swap_in
from . import bnb, vision
from .io import CheckpointError, atomic_folder, iter_tensors, load_into, load_tensors, read_json, write_tensors
from .layout import qkv_join, qkv_split
from .registry import FAMILIES, OPTIONAL_FIELDS, REFUSED, UnsupportedConfig, family_of

# config.json's special token ids, which are named Config fields
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# other config.json fields carried through a round trip in Config.extra
PASSTHROUGH = ("forced_eos_token_id", "id2label")
Model = torch.nn.Module  # CausalLM | Encoder | Seq2Seq


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


def check_model_folder(folder: str | Path, arch: str, what: str) -> None:
    """Refuse, from config.json and before any weight is read, a missing folder, a model of another
    architecture than `arch` (`what` names the one needed), or a folder without tokenizer.json. A ``.gguf``
    file holds a decoder with its vocabulary; loading it checks its metadata before any tensor is decoded."""
    if Path(folder).suffix == ".gguf":
        if arch != "causal_lm":
            raise CheckpointError(f"{folder}: a GGUF file holds a decoder-only model; this needs {what} model")
        return
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder} is not a folder: give a local HF model folder (config.json, safetensors, "
                         "tokenizer.json)")
    cfg = config_from_hf(read_json(Path(folder) / "config.json"), str(Path(folder) / "config.json"))
    if cfg.arch != arch:
        raise CheckpointError(f"{folder} holds a {cfg.arch} model; this needs {what} model")
    if not (Path(folder) / "tokenizer.json").is_file():
        raise CheckpointError(f"{Path(folder) / 'tokenizer.json'} does not exist: the model folder needs its "
                              "tokenizer.json")


def from_pretrained(folder: str | Path, *, dtype: torch.dtype | None = None) -> Model:
    """Load a local HF folder (config.json + safetensors) of a supported family, or a ``.gguf`` file.

    Returns a CausalLM, Encoder or Seq2Seq by the folder's architecture. Weights keep the checkpoint's
    dtype unless ``dtype`` is given; the tensors of quantized layers (groundup's int8/int4, bitsandbytes' 4-bit,
    GPTQ) always keep theirs.
    """
    folder = Path(folder)
    if folder.suffix == ".gguf":  # llama.cpp's single file
        from .gguf import load_gguf

        return load_gguf(folder, dtype=dtype)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; from_pretrained reads a local HF model folder "
                              "(config.json + model.safetensors) and never downloads")
    where = str(folder / "config.json")
    hf = read_json(folder / "config.json")
    if hf.get("model_type") in vision.MODEL_TYPES:  # ViT, CLIP, SigLIP, LLaVA: a config per tower
        return vision.load(folder, hf, dtype)
    cfg = config_from_hf(hf, where)
    tensors, metas = load_tensors(folder), {}
    if bnb.is_bnb(hf.get("quantization_config")):  # transformers' bitsandbytes 4-bit folder
        bnb.check_family(cfg, where)
        quant = bnb.spec_from_file(hf["quantization_config"], tensors, where)
        tensors, metas = bnb.from_file(tensors, where)
    else:
        quant = _quantization_spec(hf, folder)
    state = state_dict_from_hf(tensors, cfg)
    if quant is not None and quant.get("format") == "gptq":  # the GPTQ layers are those the file has codes for
        bnb.check_family(cfg, where, "GPTQ")
        quant["modules"] = sorted(k.removesuffix(".qweight") for k in state if k.endswith(".qweight"))
    if metas:  # the bitsandbytes states name their HF modules
        names = {m: module_name_from_hf(cfg, m) for m in metas}
        if None in names.values():
            raise CheckpointError(f"{where}: quantized module {next(m for m, g in names.items() if g is None)} is "
                                  f"not part of a {cfg.family} model")
        quant["modules"] = sorted(names.values())
    coded = set(quant["modules"]) | set(quant.get("int8_modules", [])) if quant else set()
    if dtype is not None:  # the float parts only: codes, scales and quant states keep the dtypes they were made in
        state = {k: v.to(dtype) if v.is_floating_point() and k.rpartition(".")[0] not in coded else v
                 for k, v in state.items()}
    model = meta_model(cfg)
    # A config that says "tied" while the file holds a different head keeps both, as transformers does
    # (T5 v1.1 files whose config.json leaves tie_word_embeddings unset).
    if any(a in state and s in state and not torch.equal(state[a], state[s]) for a, s in model.tied_keys().items()):
        model = meta_model(cfg.replace(tie_embeddings=False))
    if quant is not None:  # a quantized folder: the quantized layers first, then their tensors
        try:
            swap_in(model, quant, convert=False)
        except ValueError as err:
            raise CheckpointError(f"{where}: quantization_config: {err}") from None
    for hf_name, meta in metas.items():  # per bitsandbytes layer: the shape and dtype it was quantized from
        layer = model.get_submodule(names[hf_name])
        if list(meta.get("shape", ())) != [layer.out_features, layer.in_features]:
            raise CheckpointError(f"{where}: {hf_name}: the quant state's shape {meta.get('shape')} is not "
                                  f"[{layer.out_features}, {layer.in_features}], the config's")
        layer.weight_dtype = getattr(torch, meta.get("dtype", "bfloat16"))
    return load_into(model, state, str(folder)).eval()


def from_pretrained_quantized(folder: str | Path, plan: Callable[[Model], dict[str, Any]], *,
                              dtype: torch.dtype | None = None) -> Model:
    """A float folder read straight into quantized layers. ``plan(model)`` sees the model (on the meta device),
    checks, may untie its config's head, and returns the nn/qlinear.swap_in spec; each target weight is then
    quantized as its tensor is read and the float copy dropped, so memory peaks at the quantized model plus
    one float matrix, not at the float model (as transformers' load_in_4bit does)."""
    folder = Path(folder)
    hf = read_json(folder / "config.json")
    if hf.get("quantization_config"):
        raise CheckpointError(f"{folder / 'config.json'}: the folder is quantized already "
                              f"({hf['quantization_config'].get('quant_method')}); load it with from_pretrained")
    cfg = config_from_hf(hf, str(folder / "config.json"))
    model = meta_model(cfg)
    spec = plan(model)
    if model.config != cfg:  # the plan untied the head: it is quantized from a copy of the embedding
        model = meta_model(model.config)
    swap_in(model, spec, convert=False)
    layers = {n: m for n, m in model.named_modules() if n in set(spec["modules"]) | set(spec.get("int8_modules", []))}
    state: dict[str, torch.Tensor] = {}

    def keep_quantized(module: str, w: torch.Tensor) -> None:
        shim = argparse.Namespace(weight=w, bias=None, in_features=w.shape[1], out_features=w.shape[0])
        q = make_quantized(shim, layer_spec(spec, module))
        state.update({f"{module}.{k}": v for k, v in q.state_dict().items()})
        if isinstance(layers[module], NF4Linear):
            layers[module].weight_dtype = w.dtype

    for name, t in iter_tensors(folder, dtype):
        for key, part in state_dict_from_hf({name: t}, cfg).items():
            module, _, leaf = key.rpartition(".")
            if leaf == "weight" and module in layers:
                keep_quantized(module, part)
            else:  # a copy: a view would keep the file's memory map (all of it, as read) resident
                state[key] = part.clone()
    if "lm_head" in layers and "lm_head.weight" not in state and "embed.weight" in state:
        keep_quantized("lm_head", state["embed.weight"])
    return load_into(model, state, str(folder)).eval()


def _quantization_spec(hf: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """config.json's quantization_config of a groundup-quantized folder, or None; another method is refused."""
    q = hf.get("quantization_config")
    if q is None:
        return None
    if q.get("quant_method") == "gptq":  # GPTQ's checkpoint layout (AutoGPTQ, GPTQModel, groundup's gptq/awq)
        fmt = q.get("checkpoint_format", "gptq")
        if fmt not in ("gptq", "gptq_v2") or q.get("bits") not in (2, 3, 4, 8):
            raise CheckpointError(f"{folder / 'config.json'}: quantization_config: GPTQ checkpoint_format={fmt!r} "
                                  f"bits={q.get('bits')!r} is not supported (gptq or gptq_v2 at 2, 3, 4 or 8 bits)")
        return {"format": "gptq", "bits": q["bits"], "group_size": int(q.get("group_size", 128)),
                "desc_act": bool(q.get("desc_act", False)), "sym": bool(q.get("sym", True)),
                "checkpoint_format": fmt, "modules": []}
    if q.get("quant_method") != "groundup":
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config.quant_method="
                              f"{q.get('quant_method')!r} is not supported; groundup reads its own "
                              "('groundup', written by groundup quantize), bitsandbytes 4-bit, GPTQ or unquantized "
                              "folders")
    if not isinstance(q.get("modules"), list) or q.get("bits") not in (4, 8):
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config needs bits (8 or 4) and modules")
    return q


def write_model(model: Model, folder: Path, *, max_shard_bytes: int = 5 * 2**30,
                state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """config.json + safetensors into an existing folder (no atomicity: see save_pretrained). `state_dict`
    replaces model.state_dict() (e.g. the full tensors gathered from a sharded model)."""
    cfg = model.config
    if not isinstance(cfg, Config) or cfg.arch == "vision":  # the towers' own layouts
        return vision.write(model, folder, max_shard_bytes=max_shard_bytes)
    state_dict = model.state_dict() if state_dict is None else state_dict
    params = {k: v for k, v in state_dict.items() if k not in model.tied_keys()}
    dtype = params["embed.weight"].dtype
    body = config_to_hf(cfg, dtype)
    tensors = None
    spec = getattr(model, "quantization", None)
    if spec and spec.get("quant_type"):  # NF4 / FP4: the bitsandbytes format transformers reads
        bnb.check_family(cfg, str(folder))
        layers = {module_name_to_hf(cfg, n): m for n, m in model.named_modules() if isinstance(m, NF4Linear)}
        floats = sorted({module_name_to_hf(cfg, n) for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)} - set(layers))
        body["quantization_config"] = bnb.config_for(spec, floats)
        tensors = bnb.to_file(state_dict_to_hf(params, cfg), layers)
    elif spec and spec.get("format") == "gptq":  # the layout transformers / GPTQModel read
        bnb.check_family(cfg, str(folder), "GPTQ")
        body["quantization_config"] = {"quant_method": "gptq", "bits": spec["bits"], "group_size": spec["group_size"],
                                       "desc_act": spec["desc_act"], "sym": spec["sym"],
                                       "checkpoint_format": spec["checkpoint_format"],
                                       "damp_percent": spec.get("damp_percent", 0.01), "true_sequential": False,
                                       "static_groups": False}
    elif spec:  # read back by from_pretrained (transformers does not know it)
        body["quantization_config"] = {"quant_method": "groundup", **spec}
    (folder / "config.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    write_tensors(folder, tensors or state_dict_to_hf(params, cfg), max_shard_bytes=max_shard_bytes)


def save_pretrained(model: Model, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json + safetensors that transformers loads; atomic (temp folder, then rename)."""
    return atomic_folder(folder, lambda tmp: write_model(model, tmp, max_shard_bytes=max_shard_bytes))
