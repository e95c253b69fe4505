"""HF layouts of the Gemma decoders: Gemma, Gemma 2 and Gemma 3 (text).

All three are the Llama module names with Gemma's quirks as Config data:
- Gemma (Gemma team, 2024a): a tanh-GeLU gate, RMSNorm scales stored minus one (norm_weight_offset=1),
  token embeddings multiplied by sqrt(d_model) rounded to the weights' dtype, a tied head, head_dim set
  apart from d_model / n_heads.
- Gemma 2 (Gemma team, 2024b): a norm before and after each sublayer (norm_placement='sandwich'), tanh
  soft-capping of the attention scores and of the final logits, scores scaled by query_pre_attn_scalar^-0.5,
  and local (sliding-window) and global layers alternating (layer_types).
- Gemma 3 (Gemma team, 2025): Gemma 2 without soft-capping, with an RMSNorm on every q and k head, five local
  layers to a global one, and a RoPE base of its own for the local layers (rope_local_theta).
The Gemma 3 checkpoints with a vision tower (model_type gemma3) are refused by name in REFUSED.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..presets import every_kth_global
from .decoders import llama_config, llama_keys, llama_to_hf, rope_to_hf
from .layout import Family, require

_KIND_FROM_HF = {"sliding_attention": "local", "full_attention": "global"}
_KIND_TO_HF = {v: k for k, v in _KIND_FROM_HF.items()}


def _gemma_config(hf: dict[str, Any]) -> dict[str, Any]:
    act = hf.get("hidden_activation") or hf.get("hidden_act", "gelu_pytorch_tanh")
    out = llama_config({**hf, "hidden_act": act, "tie_word_embeddings": hf.get("tie_word_embeddings", True)})
    return {**out, "norm_weight_offset": 1.0, "embed_scale": "sqrt_d", "embed_scale_rounded": True}


def _gemma_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.norm_weight_offset == 1.0 and cfg.embed_scale == "sqrt_d" and cfg.embed_scale_rounded,
            "Gemma layouts need norm_weight_offset=1.0, embed_scale='sqrt_d' and embed_scale_rounded=True")
    plain = cfg.replace(norm_placement="pre", layer_types=None, rope_local_theta=None, attn_softcap=None,
                        logit_softcap=None, attn_scale_dim=None)
    out = llama_to_hf(plain)  # the Llama names and sizes; the Gemma 2/3 fields are added by their writers
    out.pop("mlp_bias")
    return {**out, "hidden_activation": out.pop("hidden_act")}


def _gemma1_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.norm_placement == "pre" and not cfg.sliding_window and cfg.qk_norm == "none",
            "Gemma (1) layout needs pre-norm, no sliding window and no qk_norm (Gemma 2/3 have their own families)")
    return _gemma_to_hf(cfg)


def _layer_types(hf: dict[str, Any], every: int) -> list[str]:
    """layer_types from config.json's list, or the released default: every `every`-th layer global."""
    kinds = hf.get("layer_types") or [_KIND_TO_HF[k] for k in every_kth_global(hf["num_hidden_layers"], every)]
    unknown = sorted(set(kinds) - set(_KIND_FROM_HF))
    require(not unknown, f"layer_types entries {unknown} are not supported (supported: {', '.join(_KIND_FROM_HF)})")
    return [_KIND_FROM_HF[k] for k in kinds]


def _gemma2_common(hf: dict[str, Any], every: int) -> dict[str, Any]:
    require(not hf.get("use_bidirectional_attention"), "use_bidirectional_attention=true (EmbeddingGemma) is "
            "not supported: these layouts are causal language models")
    kinds = _layer_types(hf, every)
    window = hf.get("sliding_window") if "local" in kinds else None
    return dict(norm_placement="sandwich", layer_types=kinds, sliding_window=window,
                attn_scale_dim=float(hf.get("query_pre_attn_scalar", 256)))


def _gemma2_config(hf: dict[str, Any]) -> dict[str, Any]:
    out = {**_gemma_config(hf), **_gemma2_common(hf, every=2)}
    return {**out, "attn_softcap": hf.get("attn_logit_softcapping"), "logit_softcap": hf.get("final_logit_softcapping")}


def _gemma2_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.norm_placement == "sandwich" and cfg.qk_norm == "none" and cfg.rope_local_theta is None,
            "Gemma 2 layout needs norm_placement='sandwich', no qk_norm and one RoPE base for all layers")
    return {**_gemma_to_hf(cfg), **_pattern_to_hf(cfg), "attn_logit_softcapping": cfg.attn_softcap,
            "final_logit_softcapping": cfg.logit_softcap}


def _pattern_to_hf(cfg: Config) -> dict[str, Any]:
    kinds = cfg.layer_types or ["local" if cfg.sliding_window else "global"] * cfg.n_layers
    return {"layer_types": [_KIND_TO_HF[k] for k in kinds], "sliding_window": cfg.sliding_window,
            "query_pre_attn_scalar": _whole(cfg.attn_scale_dim or cfg.head_dim)}


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _gemma3_config(hf: dict[str, Any]) -> dict[str, Any]:
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:  # transformers 5: one dict per layer type
        local = params.get("sliding_attention") or {}
        require(local.get("rope_type", "default") == "default",
                f"rope type {local.get('rope_type')!r} on the sliding layers is not supported (only default)")
        glob = {**hf, "rope_parameters": params.get("full_attention") or {"rope_type": "default"}}
        local_theta = local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0))
    else:  # the older flat fields: rope_theta and rope_scaling are the global layers', rope_local_base_freq the local
        glob, local_theta = hf, hf.get("rope_local_base_freq", 10000.0)
    if "rope_theta" not in (glob.get("rope_parameters") or {}) and "rope_theta" not in glob:
        glob = {**glob, "rope_theta": 1_000_000.0}  # Gemma 3's global default
    out = {**_gemma_config(glob), **_gemma2_common(hf, every=hf.get("sliding_window_pattern", 6))}
    return {**out, "qk_norm": "head", "rope_local_theta": float(local_theta),
            "attn_softcap": hf.get("attn_logit_softcapping"), "logit_softcap": hf.get("final_logit_softcapping")}


def _gemma3_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.norm_placement == "sandwich" and cfg.qk_norm == "head",
            "Gemma 3 layout needs norm_placement='sandwich' and qk_norm='head'")
    out = {**_gemma_to_hf(cfg), **_pattern_to_hf(cfg)}
    glob = rope_to_hf(cfg)["rope_parameters"]
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope.theta}
    return {**out, "rope_parameters": {"full_attention": glob, "sliding_attention": local},
            "rope_local_base_freq": local["rope_theta"], "attn_logit_softcapping": cfg.attn_softcap,
            "final_logit_softcapping": cfg.logit_softcap}


_IGNORED = (r".*rotary_emb\.inv_freq",)
_PATTERN_FIELDS = ("layer_types", "attn_scale_dim", "attn_softcap", "logit_softcap")

GEMMAS: dict[str, Family] = {
    "gemma": Family("gemma", "GemmaForCausalLM", _gemma_config, _gemma1_to_hf, llama_keys, ignored=_IGNORED),
    "gemma2": Family("gemma2", "Gemma2ForCausalLM", _gemma2_config, _gemma2_to_hf, llama_keys, ignored=_IGNORED,
                     expresses=_PATTERN_FIELDS),
    "gemma3_text": Family("gemma3_text", "Gemma3ForCausalLM", _gemma3_config, _gemma3_to_hf, llama_keys,
                          ignored=_IGNORED, expresses=(*_PATTERN_FIELDS, "rope_local_theta")),
}

# model types recognised but refused before any weight is read, with what to do instead
REFUSED: dict[str, str] = {
    "gemma3": "Gemma 3 with its vision tower (vision_config; Gemma3ForConditionalGeneration) is not supported: "
              "load a text-only checkpoint (model_type 'gemma3_text', e.g. gemma-3-1b)",
}
