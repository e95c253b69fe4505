"""GGUF (llama.cpp's single-file format) in and out: architecture metadata <-> Config, tensors <-> state dict.

The container is read by utils/gguf_read.py and written with the `gguf` package (the groundup[gguf] extra); the
block formats are decoded by kernels/ggml_quants.py; what each llama.cpp architecture stores, fixes or renames
is a record in gguf_layout.py (llama, qwen2, phi3, gemma, gemma2, gemma3), applied here the same way for all of
them: names mapped, fused tensors split and joined, llama's q/k rows permuted between HF's half-split and ggml's
interleaved RoPE pairs, norms stored plus Config.norm_weight_offset. Other architectures, and llama 3.1's
rope_freqs tensor, are refused by name before any tensor is decoded. The tokenizer (tokenizer.ggml.*) is
tokenizer/gguf_vocab.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..kernels.ggml_quants import FORMATS, TYPE_IDS, dequantize, quantize
from ..models import meta_model
from ..nn.gguf_linear import GGUFEmbedding, GGUFLinear
from ..nn.qlinear import replace_module
from ..nn.qspec import GGUFSpec
from ..tokenizer import Tokenizer, gguf_vocab
from ..utils.files import atomic_file, gguf_package
from ..utils.gguf_read import TensorInfo, open_gguf
from .gguf_layout import (
    ARCHS,
    BY_FAMILY,
    HPARAMS,
    GGUFArch,
    arch_of,
    config_from_gguf,
    gguf_name,
    join_fused,
    metadata_of,
    permute_rope,
    split_fused,
)
from .io import CheckpointError, load_into


def _gguf():
    return gguf_package(error=CheckpointError)


def _header(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """(metadata, tensors) of a GGUF file (utils/gguf_read.py); a missing, truncated or foreign file is named."""
    return open_gguf(path, FORMATS, error=CheckpointError)


def _fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata a Config is made from: the tokenizer's fields but its special ids are read with it."""
    keep = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id")
    return {k: v for k, v in meta.items() if not k.startswith("tokenizer.ggml.") or k in keep}


def _open(path: Path):
    """(tensors by name, Config) of a GGUF file, every check that needs no tensor data done."""
    meta, infos = _header(path)
    meta = _fields(meta)
    tensors = {t.name: t for t in infos}
    fields = config_from_gguf(meta, set(tensors), str(path))
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: tensor token_embd.weight is missing")
    for t in tensors.values():
        if t.type_id not in FORMATS:
            raise CheckpointError(f"{path}: tensor {t.name} has ggml type {t.type_id}, not supported (supported: "
                                  f"{', '.join(f'{v[0]} ({k})' for k, v in FORMATS.items())})")
    if fields["vocab_size"] is None:
        fields["vocab_size"] = int(tensors["token_embd.weight"].shape[-1])
    try:
        cfg = Config(**fields, name=str(meta.get("general.name", "")))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return tensors, cfg


def load_gguf(path: str | Path, *, dtype: torch.dtype | None = None, dequantize: bool = False):
    """A CausalLM from a GGUF file: metadata -> Config; the matrices kept in the file's block formats
    (nn.gguf_linear: GGUFLinear, GGUFEmbedding; memory-mapped where no row needs reordering), products on the
    native kernels. ``dequantize=True`` decodes every tensor to float instead. Norms, biases and F32 matrices
    are float (``dtype``, default fp32), as are the activations between the layers."""
    path = Path(path)
    tensors, cfg = _open(path)
    arch = BY_FAMILY[cfg.family]
    model = meta_model(cfg)
    by_gguf = {g: name for name in model.state_dict() if (g := gguf_name(name)) is not None}
    modules = dict(model.named_modules())
    state, kept, unexpected = {}, {}, []
    target = dtype or torch.float32
    for fname, t in tensors.items():
        tid = t.type_id
        shape = tuple(reversed(t.shape))  # ggml ne -> torch [out, in]
        raw = torch.from_numpy(t.data)  # a view of the copy-on-write map: no copy
        blocks = not dequantize and FORMATS[tid][0] != "F32" and len(shape) == 2
        try:
            values = raw.view(shape[0], -1) if blocks else _decode(raw, tid, shape)
        except ValueError as err:
            raise CheckpointError(f"{path}: tensor {fname}: {err}") from None
        for gname, part in split_fused(arch, cfg, fname, values, str(path)):
            name = by_gguf.get(gname)
            if name is None:
                unexpected.append(gname)
                continue
            owner = name.removesuffix(".weight")
            if blocks and isinstance(modules.get(owner), (nn.Linear, nn.Embedding)):
                kept[owner] = FORMATS[tid][0]
                state[owner + ".blocks"] = _from_file(arch, cfg, name, part)  # rows reordered only
                continue
            if blocks:  # a matrix no kept layer holds: decoded after all
                part = _decode(part.contiguous().reshape(-1), tid, (part.shape[0], shape[1]))
            state[name] = _from_file(arch, cfg, name, part).to(target)
    if unexpected:
        raise CheckpointError(f"{path}: tensor(s) a {arch.name} model with this config does not use: "
                              f"{', '.join(sorted(unexpected)[:20])}")
    _keep_blocks(model, modules, kept, target)
    return load_into(model, state, str(path)).eval()


def _decode(raw: torch.Tensor, tid: int, shape: tuple[int, ...]) -> torch.Tensor:
    return dequantize(raw, tid, int(np.prod(shape))).reshape(shape)


def _keep_blocks(model, modules: dict[str, nn.Module], kept: dict[str, str], dtype: torch.dtype) -> None:
    """Swap the layers whose weights stay in block formats for GGUF layers (on the meta device, for load_into);
    a tied head reads the embedding's blocks."""
    for name, type_name in kept.items():
        old = modules[name]
        if isinstance(old, nn.Embedding):
            new = GGUFEmbedding(old.num_embeddings, old.embedding_dim, type_name, dtype=dtype, device="meta")
        else:
            new = GGUFLinear(old.in_features, old.out_features, type_name, bias=old.bias is not None, device="meta")
        replace_module(model, name, new)
    if model.config.tie_embeddings and "embed" in kept:
        head = modules["lm_head"]
        replace_module(model, "lm_head", GGUFLinear(head.in_features, head.out_features, kept["embed"],
                                                    bias=head.bias is not None, device="meta"))
        kept = {**kept, "lm_head": kept["embed"]}
    if kept:
        model.quantization = GGUFSpec(tuple(kept), types=tuple(kept.values()))


def _rope_heads(arch: GGUFArch, cfg: Config, name: str) -> int | None:
    """The head count whose q/k rows llama.cpp permutes in tensor ``name``, or None."""
    if not arch.interleaved_rope or not name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
        return None
    return cfg.n_heads if ".q_proj." in name else cfg.n_kv_heads


def _from_file(arch: GGUFArch, cfg: Config, name: str, values: torch.Tensor) -> torch.Tensor:
    """A decoded GGUF tensor as the groundup parameter ``name`` holds it."""
    heads = _rope_heads(arch, cfg, name)
    if heads is not None:
        values = permute_rope(values, heads, to_gguf=False)
    if name.endswith("norm.weight") and cfg.norm_weight_offset:
        values = values - cfg.norm_weight_offset  # stored as offset + w
    return values


def _to_file(arch: GGUFArch, cfg: Config, name: str, values: torch.Tensor) -> torch.Tensor:
    """The inverse of _from_file."""
    heads = _rope_heads(arch, cfg, name)
    if heads is not None:
        values = permute_rope(values, heads, to_gguf=True)
    if name.endswith("norm.weight") and cfg.norm_weight_offset:
        values = values + cfg.norm_weight_offset
    return values


def _named_tensors(model, arch: GGUFArch) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
    """(GGUF name, tensor as the file holds it) for every tensor a model writes, and {GGUF name: ggml type} of
    those kept in block formats (GGUF layers: their bytes, rows in the file's order)."""
    cfg, tied, modules = model.config, model.tied_keys(), dict(model.named_modules())
    named, kept = [], {}
    for name, t in model.state_dict().items():
        if name in tied:
            continue
        owner = name.removesuffix(".blocks")
        weight = owner + ".weight" if owner != name else name
        gname = gguf_name(weight)
        if gname is None:
            raise CheckpointError(f"save_gguf: tensor {name} has no GGUF name")
        if owner != name:
            kept[gname] = modules[owner].ggml_type
            named.append((gname, _to_file(arch, cfg, weight, t.detach().cpu())))
        else:
            named.append((gname, _to_file(arch, cfg, name, t.detach().float())))
    return named, kept


def _members(arch: GGUFArch, gname: str) -> set[str]:
    """The GGUF names a fused tensor ``gname`` joins (empty for an unfused one)."""
    block, _, leaf = gname.rpartition(".")
    prefix, _, kind = block.rpartition(".")
    return {f"{prefix}.{m}.{leaf}" for m in arch.fused.get(kind, ())}


def _kept_type(arch: GGUFArch, gname: str, kept: dict[str, str]) -> str:
    """The ggml type of a kept tensor; a fused one needs its members in one type (and all kept)."""
    if gname in kept:
        return kept[gname]
    types = {kept.get(m) for m in _members(arch, gname)}
    if len(types) != 1 or None in types:
        raise CheckpointError(f"save_gguf: {gname} joins tensors of different formats ({types}); llama.cpp "
                              "stores it as one: load the file with dequantize=True to re-encode it")
    return types.pop()


def matrix_type(path: str | Path) -> str:
    """The ggml type most of a GGUF file's block matrices are stored in ("Q4_1", "Q8_0", "F16", ...)."""
    types = [FORMATS[t.type_id][0] for t in _header(Path(path))[1] if t.name.startswith("blk.") and len(t.shape) == 2
             and t.type_id in FORMATS]
    return max(set(types), key=types.count) if types else "none"


def load_tokenizer(path: str | Path):
    """The groundup.Tokenizer stored in a GGUF file's tokenizer.ggml.* metadata (as Tokenizer.from_file)."""
    return Tokenizer.from_file(path)


def save_gguf(model, path: str | Path, *, dtype: str = "f16", tokenizer=None) -> Path:
    """Write a CausalLM as a GGUF file: ``dtype`` "f32", "f16", "bf16", "q8_0", "q4_0" or "q4_1" for the matrices
    (norms and biases stay F32, as llama.cpp wants), and ``tokenizer`` (a byte-level BPE groundup.Tokenizer)
    in its metadata, which llama.cpp needs to run the file. A config the architecture cannot express is
    refused before anything is written. Layers kept in GGUF block formats (a model loaded from a GGUF file) are
    written as they are, in their own types, whatever ``dtype`` says. Atomic (utils.files.atomic_file): written
    beside, then renamed."""
    gguf = _gguf()
    kinds = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
    if dtype not in kinds:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(kinds)}")
    arch = arch_of(model.config)
    extra = metadata_of(model.config)
    return atomic_file(path, lambda tmp: _write(gguf, gguf.GGUFWriter(str(tmp), arch.name), model, arch, extra,
                                                kinds[dtype], tokenizer))


def _write(gguf, w, model, arch: GGUFArch, extra: dict[str, Any], kind: str, tokenizer) -> None:
    """Fill a GGUFWriter with a model's metadata, tokenizer and tensors (``kind`` for the matrices), then
    write it out."""
    cfg = model.config
    w.add_name(cfg.name or arch.name)
    for key, field in HPARAMS:  # uint32 for sizes, float32 for theta and eps, as llama.cpp reads them
        value = cfg.value(field)
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(f"{arch.name}.{key}", value)
    w.add_rope_dimension_count(cfg.rotary_dim)
    for key, value in extra.items():
        name = f"{arch.name}.{key}"
        if isinstance(value, list):
            w.add_array(name, value)
        else:
            (w.add_float32 if isinstance(value, float) else w.add_uint32)(name, value)
    if cfg.rope.scaling == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope.factor)
    for key, value in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_ids[0] if cfg.eos_ids else None),
                       ("padding_token_id", cfg.pad_token_id)):
        if value is not None:
            w.add_uint32(f"tokenizer.ggml.{key}", value)
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3}[kind])
    if tokenizer is not None:
        gguf_vocab.write_tokenizer(w, tokenizer, cfg.vocab_size)
        w.add_add_bos_token(False)
    named, kept = _named_tensors(model, arch)
    for gname, values in join_fused(arch, cfg, named):
        if gname in kept or _members(arch, gname) & set(kept):
            kind_here = _kept_type(arch, gname, kept)  # blocks as the file had them: bytes [rows, row bytes]
            raw, byte_shape = values.numpy(), tuple(values.shape)
        else:
            kind_here = kind if values.dim() == 2 and values.shape[1] % 32 == 0 else "F32"
            raw = quantize(values.reshape(-1), TYPE_IDS[kind_here]).numpy()
            per, size = FORMATS[TYPE_IDS[kind_here]][1:]
            byte_shape = (*values.shape[:-1], values.shape[-1] // per * size)
        w.add_tensor(gname, raw.reshape(byte_shape), raw_shape=byte_shape,
                     raw_dtype=gguf.GGMLQuantizationType[kind_here])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


__all__ = ["ARCHS", "config_from_gguf", "load_gguf", "load_tokenizer", "matrix_type", "save_gguf"]
