"""Hugging Face folders in and out: config.json + safetensors <-> Config + groundup state dict.

Local folders only (no hub, no network) and safetensors only (no pickle). Every failure names the file,
tensor or field and says what would fix it, before any large allocation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models import meta_model
from ..nn.qlinear import NF4Linear
from ..nn.qspec import GPTQSpec, NF4Spec, QuantSpec, from_json, linear_of, swap_in
from . import bnb, vision
from .convert import (
    config_from_hf,
    config_to_hf,
    module_name_from_hf,
    module_name_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)
from .gguf import load_gguf
from .io import CheckpointError, atomic_folder, iter_tensors, load_into, load_tensors, read_json, write_tensors

Model = torch.nn.Module  # CausalLM | Encoder | Seq2Seq


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


def from_pretrained(folder: str | Path, *, dtype: torch.dtype | None = None, dequantize: bool = False) -> Model:
    """Load a local HF folder (config.json + safetensors) of a supported family, or a ``.gguf`` file.

    Returns a CausalLM, Encoder or Seq2Seq by the folder's architecture. Weights keep the checkpoint's
    dtype unless ``dtype`` is given; the tensors of quantized layers (groundup's int8/int4, bitsandbytes' 4-bit,
    GPTQ) always keep theirs. A GGUF file's matrices stay in its block formats unless ``dequantize=True``.
    """
    folder = Path(folder)
    if folder.suffix == ".gguf":  # llama.cpp's single file
        return load_gguf(folder, dtype=dtype, dequantize=dequantize)
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
    if isinstance(quant, GPTQSpec):  # the GPTQ layers are those the file has codes for
        bnb.check_family(cfg, where, "GPTQ")
        quant = quant.replace(modules=sorted(k.removesuffix(".qweight") for k in state if k.endswith(".qweight")))
    if metas:  # the bitsandbytes states name their HF modules
        names = {m: module_name_from_hf(cfg, m) for m in metas}
        if None in names.values():
            raise CheckpointError(f"{where}: quantized module {next(m for m, g in names.items() if g is None)} is "
                                  f"not part of a {cfg.family} model")
        quant = quant.replace(modules=sorted(names.values()))
    coded = set(quant.covered()) if quant is not None else set()
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
    layers = {n: m for n, m in model.named_modules() if n in set(spec.covered())}
    state: dict[str, torch.Tensor] = {}

    def keep_quantized(module: str, w: torch.Tensor) -> None:
        q = spec.layer(module).make(linear_of(w))
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


def _quantization_spec(hf: dict[str, Any], folder: Path) -> QuantSpec | None:
    """config.json's quantization_config of a groundup-quantized folder, or None; another method is refused."""
    q = hf.get("quantization_config")
    if q is None:
        return None
    if q.get("quant_method") == "gptq":  # GPTQ's checkpoint layout (AutoGPTQ, GPTQModel, groundup's gptq/awq)
        fmt = q.get("checkpoint_format", "gptq")
        if fmt not in ("gptq", "gptq_v2") or q.get("bits") not in (2, 3, 4, 8):
            raise CheckpointError(f"{folder / 'config.json'}: quantization_config: GPTQ checkpoint_format={fmt!r} "
                                  f"bits={q.get('bits')!r} is not supported (gptq or gptq_v2 at 2, 3, 4 or 8 bits)")
        return GPTQSpec(bits=q["bits"], group_size=int(q.get("group_size", 128)),
                        desc_act=bool(q.get("desc_act", False)), sym=bool(q.get("sym", True)), checkpoint_format=fmt)
    if q.get("quant_method") != "groundup":
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config.quant_method="
                              f"{q.get('quant_method')!r} is not supported; groundup reads its own "
                              "('groundup', written by groundup quantize), bitsandbytes 4-bit, GPTQ or unquantized "
                              "folders")
    if not isinstance(q.get("modules"), list) or q.get("bits") not in (4, 8):
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config needs bits (8 or 4) and modules")
    try:
        return from_json(q)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config: {err}") from None


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
    if isinstance(spec, NF4Spec):  # NF4 / FP4: the bitsandbytes format transformers reads
        bnb.check_family(cfg, str(folder))
        layers = {module_name_to_hf(cfg, n): m for n, m in model.named_modules() if isinstance(m, NF4Linear)}
        floats = sorted({module_name_to_hf(cfg, n) for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)} - set(layers))
        body["quantization_config"] = bnb.config_for(spec, floats)
        tensors = bnb.to_file(state_dict_to_hf(params, cfg), layers)
    elif isinstance(spec, GPTQSpec):  # the layout transformers / GPTQModel read
        bnb.check_family(cfg, str(folder), "GPTQ")
        body["quantization_config"] = spec.to_json()
    elif spec is not None:  # read back by from_pretrained (transformers does not know it)
        body["quantization_config"] = {"quant_method": "groundup", **spec.to_json()}
    (folder / "config.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    write_tensors(folder, tensors or state_dict_to_hf(params, cfg), max_shard_bytes=max_shard_bytes)


def save_pretrained(model: Model, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json + safetensors that transformers loads; atomic (temp folder, then rename)."""
    return atomic_folder(folder, lambda tmp: write_model(model, tmp, max_shard_bytes=max_shard_bytes))
