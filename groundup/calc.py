"""Back-of-the-envelope arithmetic from a Config: parameters, FLOPs, KV cache, serving memory, Chinchilla.

Everything here is closed-form; tests check the parameter formulas against models built on the meta
device and against the published counts, and the cache formula against the course's Llama-2 figures.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch

from .config import Config
from .models import meta_model
from .multimodal import CLIPConfig, LlavaConfig

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2, "int8": 1,
               "float8": 1, "fp8": 1, "int4": 0.5, "nf4": 0.5}


def dtype_bytes(dtype: str | torch.dtype) -> float:
    """Bytes per element of a dtype name ('float16', 'bf16', 'int4' ...) or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


# parameters ----------------------------------------------------------------------------------------
def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def attention_params(cfg: Config) -> int:
    """q, k, v, o projections of one layer (and the per-head q/k norm weights, when the config has them)."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    qk_norm = {"none": 0, "head": 2 * cfg.head_dim, "full": q + kv}[cfg.qk_norm]
    return (_linear(cfg.d_model, q, cfg.attn_bias) + _linear(cfg.d_model, kv, cfg.attn_bias and cfg.key_bias)
            + _linear(cfg.d_model, kv, cfg.attn_bias) + _linear(q, cfg.d_model, cfg.attn_out_bias) + qk_norm)


def ffn_params(cfg: Config, d_ff: int | None = None) -> int:
    """One FFN d_ff wide (default: cfg.d_ff, a dense layer's)."""
    d_ff = d_ff or cfg.d_ff
    n_in = 2 if cfg.gated else 1
    return n_in * _linear(cfg.d_model, d_ff, cfg.mlp_bias) + _linear(d_ff, cfg.d_model, cfg.mlp_bias)


def expert_params(cfg: Config) -> int:
    """One routed expert (expert_d_ff wide; d_ff when unset)."""
    return ffn_params(cfg, cfg.moe.expert_d_ff)


def moe_layer_params(cfg: Config) -> tuple[int, int]:
    """(total, active per token) parameters of one MoE layer: the experts (top_k of them active), the router
    (and its noise weights), the shared expert and its gate, which every token uses."""
    E, C = cfg.n_experts, cfg.d_model
    always = _linear(C, E, cfg.moe.router_bias) + (C * E if cfg.moe.router_noise else 0)
    if cfg.moe.shared_expert_d_ff:
        always += ffn_params(cfg, cfg.moe.shared_expert_d_ff) + (C if cfg.moe.shared_expert_gate else 0)
    return E * expert_params(cfg) + always, cfg.moe.top_k * expert_params(cfg) + always


def norm_params(cfg: Config) -> int:
    """One norm layer."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


def _stacks(cfg: Config) -> list[tuple[int, bool]]:
    """(layers, has cross-attention) for each stack of blocks."""
    if cfg.arch == "seq2seq":
        return [(cfg.n_layers, False), (cfg.n_decoder_layers, True)]
    return [(cfg.n_layers, False)]


def head_params(cfg: Config) -> int:
    """Output heads: the lm_head (untied weight, bias) or, for an encoder, pooler/MLM/NSP/classifier."""
    V, C = cfg.vocab_size, cfg.d_model
    if cfg.arch != "encoder":
        return (0 if cfg.tie_embeddings else V * C) + (V if cfg.lm_head_bias else 0)
    n = _linear(C, C, True) if cfg.heads.pooler else 0
    if cfg.heads.mlm_head:  # dense + norm + (untied) decoder + its bias
        n += _linear(C, C, True) + norm_params(cfg) + (0 if cfg.tie_embeddings else V * C) + V
    n += _linear(C, 2, True) if cfg.heads.nsp_head else 0
    return n + (_linear(C, cfg.heads.num_labels, True) if cfg.heads.num_labels else 0)


def param_breakdown(cfg: Config) -> dict[str, int]:
    """Parameters by part: embeddings (tokens, positions, segments, relative-bias tables), attention (self
    and cross), ffn (experts + routers), norms, heads, total, and active (used per token under top-k MoE)."""
    stacks = _stacks(cfg)
    emb = cfg.vocab_size * cfg.d_model + cfg.heads.type_vocab_size * cfg.d_model
    for i, _ in enumerate(stacks):  # each stack has its own position table (Whisper's encoder a longer one)
        if cfg.pos == "learned":
            rows = cfg.encoder_positions if i == 0 and cfg.encoder_positions else cfg.max_seq_len
            emb += (rows + cfg.pos_offset) * cfg.d_model
        elif cfg.pos == "relative":
            emb += cfg.score_bias.rel_buckets * cfg.n_heads
    L = sum(n for n, _ in stacks)
    n_moe = cfg.moe_layer_count
    moe_total, moe_active = moe_layer_params(cfg) if n_moe else (0, 0)
    ffn = (L - n_moe) * ffn_params(cfg) + n_moe * moe_total
    ffn_active = (L - n_moe) * ffn_params(cfg) + n_moe * moe_active
    attn = sum(n * attention_params(cfg) * (2 if cross else 1) for n, cross in stacks)
    # two norms a block (one with shared_norm, four in a sandwich), one more for cross-attention
    per_layer = 1 if cfg.shared_norm else 4 if cfg.norm_placement == "sandwich" else 2
    per_block = [n * (per_layer + cross) for n, cross in stacks]
    norms = norm_params(cfg) * (sum(per_block) + len(stacks) * cfg.final_norm + cfg.embed_norm)
    head = head_params(cfg)
    if cfg.n_mels:  # Whisper's conv stem: n_mels -> C and C -> C, kernel 3, with biases
        emb += 3 * cfg.n_mels * cfg.d_model + cfg.d_model + 3 * cfg.d_model**2 + cfg.d_model
    total = emb + attn + ffn + norms + head
    return {"embeddings": emb, "attention": attn, "ffn": ffn, "norms": norms, "head": head,
            "total": total, "active": total - ffn + ffn_active}


def param_count(cfg: Config) -> int:
    """Total parameters (tied embeddings counted once)."""
    return param_breakdown(cfg)["total"]


def active_param_count(cfg: Config) -> int:
    """Parameters used for one token: for MoE only top_k experts of each layer."""
    return param_breakdown(cfg)["active"]


def lora_param_count(cfg: Config, r: int = 8, targets: Sequence[str] = ("q_proj", "v_proj")) -> int:
    """Trainable parameters of LoRA (Hu et al., 2021): r * (in + out) for each targeted matrix."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = {"q_proj": (cfg.d_model, q), "k_proj": (cfg.d_model, kv), "v_proj": (cfg.d_model, kv),
              "o_proj": (q, cfg.d_model), "up_proj": (cfg.d_model, cfg.d_ff), "down_proj": (cfg.d_ff, cfg.d_model)}
    if cfg.gated:
        shapes["gate_proj"] = (cfg.d_model, cfg.d_ff)
    experts = max(cfg.n_experts, 1)
    total = 0
    for t in targets:
        if t not in shapes:
            raise ValueError(f"LoRA target {t!r} is not a matrix of this model; choose from {', '.join(shapes)}")
        n_in, n_out = shapes[t]
        copies = experts if t in ("gate_proj", "up_proj", "down_proj") else 1
        total += copies * r * (n_in + n_out)
    return cfg.n_layers * total


# memory --------------------------------------------------------------------------------------------
def cached_layers(cfg: Config) -> int:
    """Layers whose self-attention keys/values a generating model caches: the decoder's (none for an encoder)."""
    return {"causal_lm": cfg.n_layers, "seq2seq": cfg.n_decoder_layers or 0}.get(cfg.arch, 0)


def kv_cache_bytes_per_token(cfg: Config, dtype: str | torch.dtype = "float16", *,
                             layers: int | None = None) -> float:
    """2 (K and V) x layers x kv heads x head dim x bytes: only n_kv_heads are stored, so GQA/MQA shrink it.

    For seq2seq this is per decoded token; the cross-attention cache costs the same per source token.
    ``layers`` counts only some of them (the windowed ones, say); default: every cached layer.
    """
    n = cached_layers(cfg) if layers is None else layers
    return 2 * n * cfg.n_kv_heads * cfg.head_dim * dtype_bytes(dtype)


def windowed_layers(cfg: Config) -> int:
    """Cached layers with a sliding window (all with plain sliding_window, the local ones of a layer_types
    pattern): their cache stops growing at the window."""
    if cfg.arch == "causal_lm":
        return sum(w is not None for w in cfg.layer_windows)
    return cached_layers(cfg) if cfg.sliding_window else 0  # a seq2seq decoder's self-attention


def kv_cache_bytes(cfg: Config, batch: int = 1, seq_len: int = 4096, dtype: str | torch.dtype = "float16") -> float:
    """KV cache of a batch at a sequence length; each windowed layer stores at most its window (Gemma 2: the
    local half of the layers keeps 4,096 positions, the global half all of them)."""
    local = windowed_layers(cfg)
    full = kv_cache_bytes_per_token(cfg, dtype, layers=cached_layers(cfg) - local) * seq_len
    windowed = kv_cache_bytes_per_token(cfg, dtype, layers=local) * min(seq_len, cfg.sliding_window or seq_len)
    return batch * (full + windowed)


def serving_memory(cfg: Config, batch: int = 1, seq_len: int = 4096, dtype: str = "float16",
                   weight_dtype: str | None = None) -> dict[str, float]:
    """Bytes to serve: all weights (every expert stays resident) plus the KV cache."""
    weights = param_count(cfg) * dtype_bytes(weight_dtype or dtype)
    cache = kv_cache_bytes(cfg, batch, seq_len, dtype)
    return {"weights": weights, "kv_cache": cache, "total": weights + cache}


# compute -------------------------------------------------------------------------------------------
def matmul_params_per_token(cfg: Config) -> int:
    """Weights multiplied per token: attention, active FFN/experts, routers and the vocabulary projection.

    Embedding lookups are excluded (no FLOPs); the lm_head counts even when tied. An encoder without an
    MLM head projects to no vocabulary. For seq2seq this is per token pair (one source and one target
    token, the equal-length convention of Raffel et al., 2020).
    """
    b = param_breakdown(cfg)
    ffn_active = b["ffn"] - (b["total"] - b["active"])  # the routed experts a token does not use drop out
    vocab = cfg.arch != "encoder" or cfg.heads.mlm_head
    return b["attention"] + ffn_active + (cfg.vocab_size * cfg.d_model if vocab else 0)


def flops_per_token(cfg: Config, seq_len: int | None = None, *, training: bool = False) -> float:
    """Forward FLOPs per token, ~2N plus attention; training (forward + backward) is 3x that, ~6N.

    The attention term follows Kaplan et al. (2020): 2 * layers * context * (heads * head_dim), i.e. the
    score and value products over the average causal context of a length-``seq_len`` sequence (capped by
    a sliding window). ``seq_len`` defaults to max_seq_len.
    """
    ctx = seq_len or cfg.max_seq_len
    local = windowed_layers(cfg)
    attn_layers = cfg.n_layers + 2 * (cfg.n_decoder_layers or 0)  # a decoder layer attends twice
    contexts = (attn_layers - local) * ctx + local * min(ctx, cfg.sliding_window or ctx)
    fwd = 2 * matmul_params_per_token(cfg) + 2 * contexts * cfg.n_heads * cfg.head_dim
    return 3 * fwd if training else fwd


# Chinchilla (Hoffmann et al., 2022, Table 3): compute-optimal training tokens for a parameter count.
_CHINCHILLA_ROWS = [(400e6, 8.0e9), (1e9, 20.2e9), (10e9, 205.1e9), (67e9, 1.5e12), (175e9, 3.7e12),
                    (280e9, 5.9e12), (520e9, 11.0e12), (1e12, 21.2e12), (10e12, 216.2e12)]


def chinchilla_tokens(params: float) -> float:
    """Compute-optimal training tokens for ``params`` parameters (~20 per parameter).

    Reproduces the paper's Table 3 rows exactly; between rows it interpolates in log-log space and beyond
    them it extrapolates the nearest segment.
    """
    if params <= 0:
        raise ValueError(f"params={params} must be positive")
    xs = [math.log(n) for n, _ in _CHINCHILLA_ROWS]
    ys = [math.log(d) for _, d in _CHINCHILLA_ROWS]
    x = math.log(params)
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return math.exp(ys[i - 1] + t * (ys[i] - ys[i - 1]))


def chinchilla(params: float) -> dict[str, float]:
    """Compute-optimal tokens and training FLOPs (C = 6 N D) for a model size."""
    tokens = chinchilla_tokens(params)
    return {"params": params, "tokens": tokens, "flops": 6.0 * params * tokens}


# reporting -----------------------------------------------------------------------------------------
def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes with unit='B' use binary prefixes (KiB, MiB, GiB)."""
    if unit == "B":
        for prefix in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
            if abs(n) < 1024 or prefix == "Pi":
                return f"{n:,.0f} B" if not prefix else f"{n:,.2f} {prefix}B"
            n /= 1024
    for prefix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{prefix}{unit}"
    return f"{n:g}{unit}"


def report(cfg: Config, *, batch: int = 1, seq_len: int | None = None, dtype: str = "float16") -> str:
    """A plain-text table of every figure above for one config."""
    T = seq_len or cfg.max_seq_len
    b = param_breakdown(cfg)
    rows = [(k, f"{v:,}", human(v)) for k, v in b.items()]
    rows[2:2] = [("  attention / layer", f"{attention_params(cfg):,}", human(attention_params(cfg))),
                 ("  ffn / dense layer", f"{ffn_params(cfg):,}", human(ffn_params(cfg)))]
    if cfg.n_experts:
        total, active = moe_layer_params(cfg)
        rows[4:4] = [("  one expert", f"{expert_params(cfg):,}", human(expert_params(cfg))),
                     (f"  MoE layer ({cfg.moe_layer_count} of {cfg.n_stack_layers})", f"{total:,}", human(total)),
                     (f"  MoE layer, active (top-{cfg.moe.top_k}"
                      + (" + shared" if cfg.moe.shared_expert_d_ff else "") + ")",
                      f"{active:,}", human(active))]
    per_tok = kv_cache_bytes_per_token(cfg, dtype)
    mem = serving_memory(cfg, batch, T, dtype)
    ch = chinchilla(b["total"])
    rows += [
        (f"kv cache / token ({dtype})", f"{per_tok:,.0f} B", human(per_tok, "B")),
        *([(f"  of it in {windowed_layers(cfg)} windowed layers (<= {cfg.sliding_window} tokens)",
            f"{kv_cache_bytes_per_token(cfg, dtype, layers=windowed_layers(cfg)):,.0f} B",
            human(kv_cache_bytes_per_token(cfg, dtype, layers=windowed_layers(cfg)), "B"))]
          if windowed_layers(cfg) else []),
        (f"kv cache (batch {batch} x {T})", f"{kv_cache_bytes(cfg, batch, T, dtype):,.0f} B",
         human(kv_cache_bytes(cfg, batch, T, dtype), "B")),
        (f"serving memory ({dtype})", f"{mem['total']:,.0f} B", human(mem["total"], "B")),
        (f"forward FLOPs / token (ctx {T})", f"{flops_per_token(cfg, T):.3e}", human(flops_per_token(cfg, T))),
        (f"training FLOPs / token (ctx {T})", f"{flops_per_token(cfg, T, training=True):.3e}",
         human(flops_per_token(cfg, T, training=True))),
        *_capacity_rows(cfg, batch, T),
        ("chinchilla tokens", f"{ch['tokens']:.3e}", human(ch["tokens"])),
        ("chinchilla FLOPs (6ND)", f"{ch['flops']:.3e}", ""),
    ]
    if cfg.n_experts:
        rows.insert(next(i for i, r in enumerate(rows) if r[0] == "active") + 1,
                    ("  active / total", f"{b['active'] / b['total']:.1%}", ""))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    title = cfg.name or "config"
    layers = f"{cfg.n_layers}+{cfg.n_decoder_layers}" if cfg.arch == "seq2seq" else str(cfg.n_layers)
    lines = [f"{title} ({cfg.arch}): {layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
             f"({cfg.n_kv_heads} kv), d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, pos {cfg.pos}, ffn {cfg.ffn}"
             + (f", {cfg.n_experts} experts top-{cfg.moe.top_k}" if cfg.n_experts else "")]
    lines += [f"  {a:<{w0}}  {b_:>{w1}}  {c}" for a, b_, c in rows]
    return "\n".join(lines)


def _capacity_rows(cfg: Config, batch: int, seq_len: int) -> list[tuple[str, str, str]]:
    """The expert capacity in tokens for one group (a sequence, or the batch), training and eval."""
    if not cfg.n_experts:
        return []
    n = seq_len if cfg.moe.router_group == "sequence" else batch * seq_len
    group = f"{cfg.moe.router_group} of {n:,} tokens"
    cap, cap_eval = cfg.moe.capacity(n), cfg.moe.capacity(n, training=False)
    if cap is None and cap_eval is None:
        return [(f"expert capacity ({group})", "unlimited", "no token dropped")]
    even = cfg.moe.top_k * n / cfg.n_experts
    return [(f"expert capacity ({group}), training", f"{cap:,}" if cap else "unlimited",
             f"{cap / even:.2f}x an even share" if cap else ""),
            ("expert capacity, eval", f"{cap_eval:,}" if cap_eval else "unlimited",
             f"{cap_eval / even:.2f}x an even share" if cap_eval else "")]


def vision_report(cfg: Config | CLIPConfig | LlavaConfig, title: str = "") -> str:
    """Visual tokens per image (explained) and parameters per part of a vision, dual-encoder or LLaVA config,
    counted on the meta device."""

    model = meta_model(cfg)
    tower = cfg if isinstance(cfg, Config) else cfg.vision
    g = tower.image.image_size // tower.image.patch_size
    lines = [f"{title or getattr(cfg, 'name', '') or cfg.family} ({cfg.arch})",
             f"  image {tower.image.image_size} px / patch {tower.image.patch_size} px = {g} x {g} = {g * g} patches"
             + (f", + [CLS] = {tower.image_tokens} tower tokens" if tower.image.cls_token else "")]
    if isinstance(cfg, LlavaConfig):
        drop = " ([CLS] dropped)" if tower.image.cls_token and cfg.vision_feature_select == "default" else ""
        lines.append(f"  visual tokens per image in the LM stream: {cfg.image_tokens}{drop}, from the tower's layer "
                     f"{cfg.feature_layers} of {tower.n_layers} (vision_feature_layer={cfg.vision_feature_layer})")
    parts = [(name, sum(p.numel() for p in m.parameters())) for name, m in model.named_children()]
    parts += [(name, p.numel()) for name, p in model.named_parameters(recurse=False)]
    if isinstance(cfg, Config):
        parts = [("vision encoder", model.num_params())]
    w = max(len(n) for n, _ in parts)
    lines += [f"  {n:<{w}}  {v:>15,}  {human(v)}" for n, v in parts]
    lines.append(f"  {'total':<{w}}  {model.num_params():>15,}  {human(model.num_params())}")
    return "\n".join(lines)


def audio_report(cfg: Config, title: str = "") -> str:
    """An audio encoder-decoder (Whisper): what 30 s of audio becomes, and the parameters per part, counted on the
    meta device (the conv stem, both position tables and the missing key bias are in the count)."""

    model = meta_model(cfg)
    positions = cfg.encoder_positions or cfg.max_seq_len
    frames = 2 * positions
    lines = [f"{title or cfg.name or cfg.family} (seq2seq over audio): {cfg.n_layers}+{cfg.n_decoder_layers} layers, "
             f"d_model {cfg.d_model}, {cfg.n_heads} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}",
             f"  30 s at 16 kHz = 480,000 samples -> {frames} log-mel frames of {cfg.n_mels} bins (10 ms hop) -> "
             f"{positions} encoder positions (the second conv's stride 2); the decoder holds {cfg.max_seq_len} tokens"]
    parts = [("audio stem (2 conv1d)", model.audio_stem), ("encoder", model.encoder), ("decoder", model.decoder),
             ("token embedding (tied head)", model.embed)]
    counts = [(n, sum(p.numel() for p in m.parameters())) for n, m in parts]
    w = max(len(n) for n, _ in counts)
    lines += [f"  {n:<{w}}  {v:>15,}  {human(v)}" for n, v in counts]
    lines.append(f"  {'total':<{w}}  {model.num_params():>15,}  {human(model.num_params())}")
    return "\n".join(lines)
