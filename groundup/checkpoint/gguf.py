"""GGUF (llama.cpp's single-file format) in and out: architecture metadata <-> Config, tensors <-> state dict.

The container is read and written with the `gguf` package (the groundup[gguf] extra); the block formats are
decoded by ggml_quants.py. What llama.cpp's converter changes, undone here on read and redone on write:
- tensor names: ``blk.{i}.attn_q`` for ``blocks.{i}.attn.q_proj`` and so on (``_NAMES``);
- shapes: ggml lists dimensions innermost first, so a weight [out, in] is stored as ne = (in, out);
- llama's q and k rows: HF's half-split rotary layout is permuted to ggml's interleaved pairs
  (rows (h, 2, D/2) -> (h, D/2, 2) per head); qwen2 and gemma keep the half-split (NEOX) layout;
- gemma's norm weights: stored as 1 + w (llama.cpp's RMSNorm multiplies by the stored value).
- phi3's fused tensors: ``attn_qkv`` (q rows, then k, then v) and ``ffn_up`` (gate rows, then up) are split
  into groundup's separate projections on read and joined on write.
Architectures: llama (Llama, Mistral, SmolLM), qwen2, gemma, phi3 (Phi-3 mini 4k). Others, and llama 3.1's
rope_freqs tensor, are refused by name before any tensor is decoded. The tokenizer (tokenizer.ggml.*) is
tokenizer/gguf_vocab.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..models import meta_model
from ..utils.files import atomic_file, gguf_package, read_gguf
from .ggml_quants import FORMATS, TYPE_IDS, dequantize, quantize
from .io import CheckpointError

ARCHS = ("llama", "qwen2", "gemma", "phi3")
# {arch}.<key> metadata <-> Config field, both ways (rope.dimension_count is derived: rotary_dim)
HPARAMS = (("context_length", "max_seq_len"), ("embedding_length", "d_model"), ("block_count", "n_layers"),
           ("feed_forward_length", "d_ff"), ("attention.head_count", "n_heads"),
           ("attention.head_count_kv", "n_kv_heads"), ("attention.key_length", "head_dim"),
           ("attention.value_length", "head_dim"), ("rope.freq_base", "rope_theta"),
           ("attention.layer_norm_rms_epsilon", "norm_eps"), ("vocab_size", "vocab_size"))
_NAMES = {  # groundup module -> GGUF tensor (without .weight / .bias)
    "embed": "token_embd", "norm": "output_norm", "lm_head": "output",
    "blocks.{i}.attn_norm": "blk.{i}.attn_norm", "blocks.{i}.mlp_norm": "blk.{i}.ffn_norm",
    "blocks.{i}.attn.q_proj": "blk.{i}.attn_q", "blocks.{i}.attn.k_proj": "blk.{i}.attn_k",
    "blocks.{i}.attn.v_proj": "blk.{i}.attn_v", "blocks.{i}.attn.o_proj": "blk.{i}.attn_output",
    "blocks.{i}.mlp.gate_proj": "blk.{i}.ffn_gate", "blocks.{i}.mlp.up_proj": "blk.{i}.ffn_up",
    "blocks.{i}.mlp.down_proj": "blk.{i}.ffn_down",
}


def _gguf():
    return gguf_package(error=CheckpointError)


def _reader(path: Path):
    return read_gguf(path, error=CheckpointError)


def _fields(reader) -> dict[str, Any]:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in ("tokenizer.ggml.bos_token_id",
                                                                  "tokenizer.ggml.eos_token_id",
                                                                  "tokenizer.ggml.padding_token_id"):
            continue  # vocabularies are long; read when the tokenizer is built
        try:
            out[name] = field.contents()
        except Exception:
            continue
    return out


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], source: str) -> dict[str, Any]:
    """The Config fields of a GGUF file's metadata (and of which tensors it has: biases, an untied output);
    vocab_size is None when the metadata lacks it (the caller reads it off the embedding)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise CheckpointError(f"{source}: general.architecture={arch!r} is not supported (supported: "
                              f"{', '.join(ARCHS)})")

    def key(name: str, default: Any = KeyError) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is KeyError:
            raise CheckpointError(f"{source}: metadata key {arch}.{name} is missing")
        return value

    if "rope_freqs.weight" in tensor_names:
        raise CheckpointError(f"{source}: tensor rope_freqs (llama 3.1's rope scaling as per-dimension factors) is "
                              "not supported yet; load the HF folder of this model instead")
    if "rope_factors_long.weight" in tensor_names:
        raise CheckpointError(f"{source}: tensors rope_factors_long/short (Phi-3 128k's LongRoPE) are not supported "
                              "yet; load the HF folder of this model instead")
    d, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d // heads))
    rot = int(key("rope.dimension_count", head_dim))
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise CheckpointError(f"{source}: {arch}.rope.scaling.type={scaling!r} is not supported (none, linear)")
    ids = {k: int(meta[f"tokenizer.ggml.{g}"]) for k, g in (("bos_token_id", "bos_token_id"),
                                                          ("eos_token_id", "eos_token_id"),
                                                          ("pad_token_id", "padding_token_id"))
           if f"tokenizer.ggml.{g}" in meta}
    vocab = meta.get(f"{arch}.vocab_size")
    fields: dict[str, Any] = dict(
        family=arch, vocab_size=int(vocab) if vocab else None, d_model=d, n_layers=int(key("block_count")),
        n_heads=heads, n_kv_heads=int(key("attention.head_count_kv", heads)), head_dim=head_dim,
        d_ff=int(key("feed_forward_length")), max_seq_len=int(key("context_length", 2048)), pos="rope",
        rope_theta=float(key("rope.freq_base", 10000.0)), rotary_fraction=rot / head_dim, norm="rmsnorm",
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)), ffn="swiglu", attn_bias=False,
        attn_out_bias=False, mlp_bias=False, tie_embeddings="output.weight" not in tensor_names,
        sliding_window=None, **ids)
    if scaling == "linear":
        fields.update(rope_scaling="linear", rope_scaling_factor=float(key("rope.scaling.factor")))
    if arch == "qwen2":
        fields.update(attn_bias="blk.0.attn_q.bias" in tensor_names)
    if arch == "phi3" and meta.get("phi3.attention.sliding_window"):
        fields.update(sliding_window=int(meta["phi3.attention.sliding_window"]))
    if arch == "gemma":
        fields.update(family="gemma", ffn="geglu_tanh", norm_weight_offset=1.0, embed_scale="sqrt_d",
                      embed_scale_rounded=True, norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)))
    return fields


def _permute(w: torch.Tensor, heads: int, inverse: bool) -> torch.Tensor:
    """llama.cpp's q/k row order: per head, rows (2, D/2) <-> (D/2, 2) (half-split pairs <-> interleaved)."""
    shape = w.shape
    half = shape[0] // heads // 2
    if inverse:  # GGUF -> HF: (h, D/2, 2) -> (h, 2, D/2)
        return w.reshape(heads, half, 2, *shape[1:]).transpose(1, 2).reshape(shape)
    return w.reshape(heads, 2, half, *shape[1:]).transpose(1, 2).reshape(shape)


_FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_up": ("ffn_gate", "ffn_up")}  # phi3: joined rows


def _fused_rows(cfg: Config, fused: str) -> list[int]:
    kv = cfg.n_kv_heads * cfg.head_dim
    return [cfg.n_heads * cfg.head_dim, kv, kv] if fused == "attn_qkv" else [cfg.d_ff, cfg.d_ff]


def _split_fused(cfg: Config, gname: str, values: torch.Tensor, source: str) -> list[tuple[str, torch.Tensor]]:
    """A phi3 file's fused tensor -> the (llama-named) parts it joins; any other tensor as it is."""
    block, _, leaf = gname.rpartition(".")  # blk.{i}.attn_qkv / weight
    prefix, _, kind = block.rpartition(".")
    if cfg.family != "phi3" or kind not in _FUSED:
        return [(gname, values)]
    rows = _fused_rows(cfg, kind)
    if values.shape[0] != sum(rows):
        raise CheckpointError(f"{source}: tensor {gname} has {values.shape[0]} rows; phi3 with this config needs "
                              f"{sum(rows)} ({' + '.join(map(str, rows))})")
    return [(f"{prefix}.{part}.{leaf}", t) for part, t in zip(_FUSED[kind], values.split(rows), strict=True)]


def _join_fused(cfg: Config, named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The reverse of _split_fused over a list of (GGUF name, tensor): phi3's q/k/v and gate/up joined."""
    if cfg.family != "phi3":
        return named
    parts = dict(named)
    out, done = [], set()
    for gname, t in named:
        block, _, leaf = gname.rpartition(".")
        prefix, _, kind = block.rpartition(".")
        fused = next((f for f, members in _FUSED.items() if kind in members), None)
        if fused is None:
            out.append((gname, t))
        elif gname not in done:
            names = [f"{prefix}.{m}.{leaf}" for m in _FUSED[fused]]
            out.append((f"{prefix}.{fused}.{leaf}", torch.cat([parts[n] for n in names])))
            done.update(names)
    return out


def _gguf_name(name: str) -> tuple[str, str] | None:
    """groundup tensor name -> (GGUF tensor name) or None; blocks.{i}.x.weight -> blk.{i}.y.weight."""
    module, _, leaf = name.rpartition(".")
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "blocks":
        template = ".".join(["blocks", "{i}", *parts[2:]])
        target = _NAMES.get(template)
        return None if target is None else (target.format(i=parts[1]) + "." + leaf, parts[1])
    target = _NAMES.get(module)
    return None if target is None else (target + "." + leaf, "")


def _open(path: Path):
    """(tensors by name, Config) of a GGUF file, every check that needs no tensor data done."""
    reader = _reader(path)
    meta = _fields(reader)
    tensors = {t.name: t for t in reader.tensors}
    fields = config_from_gguf(meta, set(tensors), str(path))
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: tensor token_embd.weight is missing")
    for t in tensors.values():
        if int(t.tensor_type) not in FORMATS:
            raise CheckpointError(f"{path}: tensor {t.name} has ggml type {t.tensor_type.name} ({int(t.tensor_type)}), "
                                  f"not supported (supported: {', '.join(v[0] for v in FORMATS.values())})")
    if fields["vocab_size"] is None:
        fields["vocab_size"] = int(tensors["token_embd.weight"].shape[-1])
    try:
        cfg = Config(**fields, name=str(meta.get("general.name", "")))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return tensors, cfg


def load_gguf(path: str | Path, *, dtype: torch.dtype | None = None):
    """A CausalLM from a GGUF file: metadata -> Config, every tensor decoded to float (``dtype``, default fp32)."""
    path = Path(path)
    tensors, cfg = _open(path)
    model = meta_model(cfg)
    expected = model.state_dict()
    by_gguf = {}
    for name in expected:
        mapped = _gguf_name(name)
        if mapped is not None:
            by_gguf[mapped[0]] = name
    state, unexpected = {}, []
    target = dtype or torch.float32
    for fname, t in tensors.items():
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # ggml ne -> torch [out, in]
        raw = torch.from_numpy(np.array(t.data, copy=True).reshape(-1).view(np.uint8))  # off the read-only map
        try:
            decoded = dequantize(raw, int(t.tensor_type), int(t.n_elements)).reshape(shape)
        except ValueError as err:
            raise CheckpointError(f"{path}: tensor {fname}: {err}") from None
        for gname, values in _split_fused(cfg, fname, decoded, str(path)):
            name = by_gguf.get(gname)
            if name is None:
                unexpected.append(gname)
                continue
            if cfg.family == "llama" and name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
                heads = cfg.n_heads if ".q_proj." in name else cfg.n_kv_heads
                values = _permute(values, heads, inverse=True)
            if cfg.family == "gemma" and name.endswith("norm.weight"):
                values = values - 1  # stored as 1 + w
            state[name] = values.to(target)
    if unexpected:
        raise CheckpointError(f"{path}: tensor(s) a {cfg.family} model does not use: "
                              f"{', '.join(sorted(unexpected)[:20])}")
    from .hf import load_into

    return load_into(model, state, str(path)).eval()


def matrix_type(path: str | Path) -> str:
    """The ggml type most of a GGUF file's block matrices are stored in ("Q4_1", "Q8_0", "F16", ...)."""
    types = [t.tensor_type.name for t in _reader(Path(path)).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    return max(set(types), key=types.count) if types else "none"


def load_tokenizer(path: str | Path):
    """The groundup.Tokenizer stored in a GGUF file's tokenizer.ggml.* metadata (as Tokenizer.from_file)."""
    from ..tokenizer.gguf_vocab import load

    return load(path)


def save_gguf(model, path: str | Path, *, dtype: str = "f16", tokenizer=None) -> Path:
    """Write a CausalLM as a GGUF file: ``dtype`` "f32", "f16", "bf16", "q8_0" or "q4_0" for the matrices
    (norms and biases stay F32, as llama.cpp wants), and ``tokenizer`` (a byte-level BPE groundup.Tokenizer)
    in its metadata, which llama.cpp needs to run the file. Atomic (utils.files.atomic_file): written beside,
    then renamed."""
    gguf = _gguf()
    cfg = model.config
    if cfg.family not in ARCHS or cfg.arch != "causal_lm":
        raise CheckpointError(f"save_gguf writes the {', '.join(ARCHS)} architectures; Config.family={cfg.family!r}")
    kinds = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
    if dtype not in kinds:
        raise ValueError(f"dtype={dtype!r} must be one of {', '.join(kinds)}")
    unsupported = [f for f in ("layer_types", "attn_softcap", "logit_softcap", "attn_scale_dim")
                   if getattr(cfg, f) is not None]
    window = cfg.sliding_window if cfg.family != "phi3" else None  # phi3 has a key for it
    if unsupported or cfg.rope_scaling not in ("none", "linear") or window:
        raise CheckpointError(f"save_gguf: {', '.join(unsupported) or 'this rope scaling / window'} has no GGUF "
                              "key written here")
    if cfg.family == "gemma" and not cfg.tie_embeddings:  # llama.cpp's gemma would refuse the file
        raise CheckpointError("save_gguf: llama.cpp's gemma architecture has no output tensor (the head is the "
                              "embedding); this model's lm_head is untied")
    return atomic_file(path, lambda tmp: _write(gguf, gguf.GGUFWriter(str(tmp), cfg.family), model, kinds[dtype],
                                                tokenizer))


def _write(gguf, w, model, kind: str, tokenizer) -> None:
    """Fill a GGUFWriter with a model's metadata, tokenizer and tensors (``kind`` for the matrices), then
    write it out."""
    cfg = model.config
    arch = cfg.family
    w.add_name(cfg.name or arch)
    for key, field in HPARAMS:  # uint32 for sizes, float32 for theta and eps, as llama.cpp reads them
        value = getattr(cfg, field)
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(f"{arch}.{key}", value)
    w.add_rope_dimension_count(cfg.rotary_dim)
    if cfg.family == "phi3" and cfg.sliding_window:
        w.add_uint32("phi3.attention.sliding_window", cfg.sliding_window)
    if cfg.rope_scaling == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling_factor)
    for key, value in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_ids[0] if cfg.eos_ids else None),
                       ("padding_token_id", cfg.pad_token_id)):
        if value is not None:
            w.add_uint32(f"tokenizer.ggml.{key}", value)
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2}[kind])
    if tokenizer is not None:
        from ..tokenizer.gguf_vocab import write_tokenizer

        write_tokenizer(w, tokenizer, cfg.vocab_size)
        w.add_add_bos_token(False)
    tied = model.tied_keys()
    named = []
    for name, t in model.state_dict().items():
        if name in tied:
            continue
        mapped = _gguf_name(name)
        if mapped is None:
            raise CheckpointError(f"save_gguf: tensor {name} has no GGUF name")
        values = t.detach().float()
        if cfg.family == "llama" and name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            values = _permute(values, cfg.n_heads if ".q_proj." in name else cfg.n_kv_heads, inverse=False)
        if cfg.family == "gemma" and name.endswith("norm.weight"):
            values = values + 1
        named.append((mapped[0], values))
    for gname, values in _join_fused(cfg, named):
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
