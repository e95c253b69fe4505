"""llama.cpp's architectures as data: one GGUFArch record per ``general.architecture`` groundup reads and writes.

A record says what llama.cpp fixes for the architecture rather than storing it in the file: the Config fields
every such model has (Gemma's tanh-GeLU gate, its norms stored as 1 + w, the scaled embeddings), the RoPE row
order of q and k, the fused tensors, the default layer pattern (Gemma 2 alternates local and global layers,
Gemma 3 has five local layers to one global), the local layers' RoPE base, the query scale and the window when
the file stores none. Everything else comes from the ``{arch}.*`` metadata keys, read and written the same way
for every record, so a new architecture is a new record.

What every architecture shares:
- tensor names: ``blk.{i}.attn_q`` for ``blocks.{i}.attn.q_proj`` and so on (``NAMES``), with Gemma 2/3's
  ``post_attention_norm`` / ``post_ffw_norm`` and the q/k head norms where the model has them;
- shapes: ggml lists dimensions innermost first, so a weight [out, in] is stored as ne = (in, out);
- norm weights stored as ``w + Config.norm_weight_offset`` (llama.cpp's RMSNorm multiplies by the stored value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import Config
from ..presets import every_kth_global
from .io import CheckpointError
from .layout import qkv_join, qkv_split

# {arch}.<key> metadata <-> Config field, both ways (rope.dimension_count is derived: rotary_dim)
HPARAMS = (("context_length", "max_seq_len"), ("embedding_length", "d_model"), ("block_count", "n_layers"),
           ("feed_forward_length", "d_ff"), ("attention.head_count", "n_heads"),
           ("attention.head_count_kv", "n_kv_heads"), ("attention.key_length", "head_dim"),
           ("attention.value_length", "head_dim"), ("rope.freq_base", "rope_theta"),
           ("attention.layer_norm_rms_epsilon", "norm_eps"), ("vocab_size", "vocab_size"))
NAMES = {  # groundup module -> GGUF tensor (without .weight / .bias)
    "embed": "token_embd", "norm": "output_norm", "lm_head": "output",
    "blocks.{i}.attn_norm": "blk.{i}.attn_norm", "blocks.{i}.mlp_norm": "blk.{i}.ffn_norm",
    "blocks.{i}.post_attn_norm": "blk.{i}.post_attention_norm", "blocks.{i}.post_mlp_norm": "blk.{i}.post_ffw_norm",
    "blocks.{i}.attn.q_proj": "blk.{i}.attn_q", "blocks.{i}.attn.k_proj": "blk.{i}.attn_k",
    "blocks.{i}.attn.v_proj": "blk.{i}.attn_v", "blocks.{i}.attn.o_proj": "blk.{i}.attn_output",
    "blocks.{i}.attn.q_norm": "blk.{i}.attn_q_norm", "blocks.{i}.attn.k_norm": "blk.{i}.attn_k_norm",
    "blocks.{i}.mlp.gate_proj": "blk.{i}.ffn_gate", "blocks.{i}.mlp.up_proj": "blk.{i}.ffn_up",
    "blocks.{i}.mlp.down_proj": "blk.{i}.ffn_down",
}
# Config fields off by default (None) that only some architectures hold
OPTIONAL = ("layer_types", "rope_local_theta", "attn_softcap", "logit_softcap", "attn_scale_dim")
_SOFTCAP_KEYS = {"attn_softcap": "attn_logit_softcapping", "logit_softcap": "final_logit_softcapping"}

_GEMMA = dict(ffn="geglu_tanh", norm_weight_offset=1.0, embed_scale="sqrt_d", embed_scale_rounded=True)


@dataclass(frozen=True)
class GGUFArch:
    """How one llama.cpp architecture maps onto Config and groundup tensor names."""

    name: str  # general.architecture
    family: str  # the Config.family (an HF model_type) of the models it holds
    fixed: dict[str, Any] = field(default_factory=dict)  # Config fields llama.cpp hard-codes for it
    interleaved_rope: bool = False  # q/k rows in ggml's interleaved pairs (llama) rather than HF's half split
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # GGUF tensor -> the tensors whose rows it joins
    tied_only: bool = False  # llama.cpp reads no output tensor: the head is the embedding
    # Layer pattern llama.cpp applies when the file has a sliding window: every k-th layer global, the others
    # local; None = the window (if any) holds in every layer
    global_every: int | None = None
    default_window: int | None = None  # the window when the file stores none (None: no window)
    local_theta: float | None = None  # the local layers' RoPE base when the file stores none (None: the global one)
    softcaps: tuple[str, ...] = ()  # the soft-cap Config fields llama.cpp reads for it
    # llama.cpp scales queries by 1 / sqrt(d_model / n_heads) instead of 1 / sqrt(head_dim) at these layer counts
    # (Gemma 2/3 27B, following the reference implementation); attn_scale_dim is the number under the root
    wide_scale_layers: tuple[int, ...] = ()
    holds: tuple[str, ...] = ()  # the OPTIONAL fields a file of this architecture can express

    def scale_dim(self, cfg_fields: dict[str, Any]) -> float:
        """The number whose inverse square root llama.cpp scales the queries by, for these Config fields."""
        if cfg_fields["n_layers"] in self.wide_scale_layers:
            return float(cfg_fields["d_model"] // cfg_fields["n_heads"])
        return float(cfg_fields["head_dim"])


ARCHS: dict[str, GGUFArch] = {a.name: a for a in (
    GGUFArch("llama", "llama", interleaved_rope=True),  # Llama, Mistral, SmolLM
    GGUFArch("qwen2", "qwen2"),
    GGUFArch("phi3", "phi3", fused={"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_up": ("ffn_gate", "ffn_up")}),
    GGUFArch("gemma", "gemma", fixed=_GEMMA, tied_only=True),
    GGUFArch("gemma2", "gemma2", fixed=dict(_GEMMA, norm_placement="sandwich"), tied_only=True, global_every=2,
             default_window=4096, softcaps=("attn_softcap", "logit_softcap"), wide_scale_layers=(46,),
             holds=("layer_types", "attn_softcap", "logit_softcap", "attn_scale_dim")),
    GGUFArch("gemma3", "gemma3_text", fixed=dict(_GEMMA, norm_placement="sandwich", qk_norm="head"), global_every=6,
             local_theta=10000.0, softcaps=("logit_softcap",), wide_scale_layers=(62,),
             holds=("layer_types", "rope_local_theta", "logit_softcap", "attn_scale_dim")),
)}
BY_FAMILY = {a.family: a for a in ARCHS.values()}


def arch_of(cfg: Config) -> GGUFArch:
    """The record that writes ``cfg``, or a CheckpointError naming the families that have one."""
    if cfg.arch != "causal_lm" or cfg.family not in BY_FAMILY:
        raise CheckpointError(f"save_gguf writes the families {', '.join(BY_FAMILY)} (llama.cpp's "
                              f"{', '.join(ARCHS)}); Config.family={cfg.family!r}")
    return BY_FAMILY[cfg.family]


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], source: str) -> dict[str, Any]:
    """The Config fields of a GGUF file's metadata (and of which tensors it has: biases, an untied output);
    vocab_size is None when the metadata lacks it (the caller reads it off the embedding)."""
    name = meta.get("general.architecture")
    if name not in ARCHS:
        raise CheckpointError(f"{source}: general.architecture={name!r} is not supported (supported: "
                              f"{', '.join(ARCHS)})")
    arch = ARCHS[name]

    def key(k: str, default: Any = KeyError) -> Any:
        value = meta.get(f"{name}.{k}", default)
        if value is KeyError:
            raise CheckpointError(f"{source}: metadata key {name}.{k} is missing")
        return value

    for tensor, what in (("rope_freqs.weight", "llama 3.1's rope scaling as per-dimension factors"),
                         ("rope_factors_long.weight", "Phi-3 128k's LongRoPE factors")):
        if tensor in tensor_names:
            raise CheckpointError(f"{source}: tensor {tensor.split('.')[0]} ({what}) is not supported; load the HF "
                                  "folder of this model instead")
    d, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d // heads))
    rot = int(key("rope.dimension_count", head_dim))
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise CheckpointError(f"{source}: {name}.rope.scaling.type={scaling!r} is not supported (none, linear)")
    ids = {k: int(meta[f"tokenizer.ggml.{g}"]) for k, g in (("bos_token_id", "bos_token_id"),
                                                          ("eos_token_id", "eos_token_id"),
                                                          ("pad_token_id", "padding_token_id"))
           if f"tokenizer.ggml.{g}" in meta}
    vocab = key("vocab_size", None)
    fields: dict[str, Any] = dict(
        family=arch.family, vocab_size=int(vocab) if vocab else None, d_model=d, n_layers=int(key("block_count")),
        n_heads=heads, n_kv_heads=int(key("attention.head_count_kv", heads)), head_dim=head_dim,
        d_ff=int(key("feed_forward_length")), max_seq_len=int(key("context_length", 2048)), pos="rope",
        rope_theta=float(key("rope.freq_base", 10000.0)), rotary_fraction=rot / head_dim, norm="rmsnorm",
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)), ffn="swiglu",
        attn_bias="blk.0.attn_q.bias" in tensor_names, attn_out_bias="blk.0.attn_output.bias" in tensor_names,
        mlp_bias=False, tie_embeddings="output.weight" not in tensor_names, **ids)
    fields.update(arch.fixed)
    if scaling == "linear":
        fields.update(rope_scaling="linear", rope_scaling_factor=float(key("rope.scaling.factor")))
    fields.update(_pattern_from_meta(arch, key, fields))
    for f in arch.softcaps:
        cap = key(_SOFTCAP_KEYS[f], None)
        fields[f] = float(cap) if cap else None
    return fields


def _pattern_from_meta(arch: GGUFArch, key, fields: dict[str, Any]) -> dict[str, Any]:
    """The window, the layer pattern, the local RoPE base and the query scale llama.cpp gives the file."""
    window = key("attention.sliding_window", arch.default_window)
    out: dict[str, Any] = {"sliding_window": int(window) if window else None}
    if arch.global_every is None:
        return out
    out["attn_scale_dim"] = arch.scale_dim(fields)
    if not window:
        return out
    pattern = key("attention.sliding_window_pattern", arch.global_every)
    n = fields["n_layers"]
    if isinstance(pattern, list):  # one flag a layer: True = local (sliding window)
        kinds = ["local" if p else "global" for p in pattern[:n]]
    else:
        kinds = every_kth_global(n, int(pattern))
    local = key("rope.freq_base_swa", arch.local_theta)
    out["layer_types"] = kinds
    if "rope_local_theta" in arch.holds:
        out["rope_local_theta"] = float(local) if local is not None else fields["rope_theta"]
    return out


def metadata_of(cfg: Config) -> dict[str, Any]:
    """The ``{arch}.*`` keys beyond HPARAMS that carry ``cfg`` (a CheckpointError for a field the architecture
    cannot express, before anything is written)."""
    arch = arch_of(cfg)
    dropped = [f for f in OPTIONAL if getattr(cfg, f) is not None and f not in arch.holds]
    fixed = [f"{k}={cfg.value(k)!r}" for k, v in arch.fixed.items() if cfg.value(k) != v]
    if dropped or fixed:
        raise CheckpointError(f"save_gguf: llama.cpp's {arch.name} cannot express "
                              f"{', '.join(dropped + fixed)}; it needs {arch.fixed or 'none of them set'}")
    if arch.tied_only and not cfg.tie_embeddings:
        raise CheckpointError(f"save_gguf: llama.cpp's {arch.name} architecture has no output tensor (the head is "
                              "the embedding); this model's lm_head is untied")
    if cfg.rope.scaling not in ("none", "linear"):
        raise CheckpointError(f"save_gguf: rope_scaling={cfg.rope.scaling!r} has no GGUF key written here")
    out: dict[str, Any] = {}
    if cfg.sliding_window:
        out["attention.sliding_window"] = cfg.sliding_window
    if arch.global_every is not None:
        out.update(_pattern_to_meta(arch, cfg))
    elif cfg.layer_types is not None:
        raise CheckpointError(f"save_gguf: llama.cpp's {arch.name} has no layer pattern (layer_types)")
    for f in arch.softcaps:
        if getattr(cfg, f) is not None:
            out[_SOFTCAP_KEYS[f]] = float(getattr(cfg, f))
    return out


def _pattern_to_meta(arch: GGUFArch, cfg: Config) -> dict[str, Any]:
    kinds = cfg.layer_types or ["local" if cfg.sliding_window else "global"] * cfg.n_layers
    if "local" in kinds and not cfg.sliding_window:
        raise CheckpointError("save_gguf: local layers need sliding_window")
    want = arch.scale_dim(dict(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                               head_dim=cfg.head_dim))
    if not math.isclose(cfg.attn_scale_dim or cfg.head_dim, want):
        raise CheckpointError(f"save_gguf: llama.cpp's {arch.name} scales queries by 1/sqrt({want:g}) at "
                              f"{cfg.n_layers} layers; attn_scale_dim={cfg.attn_scale_dim} would be lost")
    out: dict[str, Any] = {}
    if not cfg.sliding_window:
        return out
    if kinds != every_kth_global(cfg.n_layers, arch.global_every):  # another pattern: llama.cpp reads one flag a layer
        out["attention.sliding_window_pattern"] = [k == "local" for k in kinds]
    local = cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope.theta
    if local != (arch.local_theta if arch.local_theta is not None else cfg.rope.theta):
        out["rope.freq_base_swa"] = float(local)
    return out


def permute_rope(w: torch.Tensor, heads: int, *, to_gguf: bool) -> torch.Tensor:
    """llama.cpp's q/k row order: per head, rows (2, D/2) <-> (D/2, 2) (half-split pairs <-> interleaved)."""
    shape = w.shape
    half = shape[0] // heads // 2
    if to_gguf:  # HF -> GGUF: (h, 2, D/2) -> (h, D/2, 2)
        return w.reshape(heads, 2, half, *shape[1:]).transpose(1, 2).reshape(shape)
    return w.reshape(heads, half, 2, *shape[1:]).transpose(1, 2).reshape(shape)


def gguf_name(name: str) -> str | None:
    """groundup tensor name -> GGUF tensor name, or None; blocks.{i}.x.weight -> blk.{i}.y.weight."""
    module, _, leaf = name.rpartition(".")
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "blocks":
        target = NAMES.get(".".join(["blocks", "{i}", *parts[2:]]))
        return None if target is None else target.format(i=parts[1]) + "." + leaf
    target = NAMES.get(module)
    return None if target is None else target + "." + leaf


def split_fused(arch: GGUFArch, cfg: Config, gname: str, values: torch.Tensor,
                source: str) -> list[tuple[str, torch.Tensor]]:
    """A fused tensor of the file -> the (unfused) GGUF tensors whose rows it joins; any other as it is."""
    block, _, leaf = gname.rpartition(".")  # blk.{i}.attn_qkv / weight
    prefix, _, kind = block.rpartition(".")
    if kind not in arch.fused:
        return [(gname, values)]
    rows = _fused_rows(cfg, kind)
    if values.shape[0] != sum(rows):
        raise CheckpointError(f"{source}: tensor {gname} has {values.shape[0]} rows; {arch.name} with this config "
                              f"needs {sum(rows)} ({' + '.join(map(str, rows))})")
    parts = qkv_split(values, cfg, groups=1) if kind == "attn_qkv" else values.chunk(2, dim=0)
    return [(f"{prefix}.{p}.{leaf}", t) for p, t in zip(arch.fused[kind], parts, strict=True)]


def join_fused(arch: GGUFArch, cfg: Config, named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The reverse of split_fused over a list of (GGUF name, tensor)."""
    parts = dict(named)
    out, done = [], set()
    for gname, t in named:
        block, _, leaf = gname.rpartition(".")
        prefix, _, kind = block.rpartition(".")
        fused = next((f for f, members in arch.fused.items() if kind in members), None)
        if fused is None:
            out.append((gname, t))
        elif gname not in done:
            names = [f"{prefix}.{m}.{leaf}" for m in arch.fused[fused]]
            members = [parts[n] for n in names]
            out.append((f"{prefix}.{fused}.{leaf}",
                        qkv_join(*members, cfg, groups=1) if fused == "attn_qkv" else torch.cat(members)))
            done.update(names)
    return out


def _fused_rows(cfg: Config, fused: str) -> list[int]:
    kv = cfg.n_kv_heads * cfg.head_dim
    return [cfg.n_heads * cfg.head_dim, kv, kv] if fused == "attn_qkv" else [cfg.d_ff, cfg.d_ff]
