"""HF layouts of the decoder-only families: GPT-2, OPT, GPT-NeoX, BLOOM, Falcon, MPT, Llama, Mistral, Mixtral,
Phi-3, OLMo 2, Qwen2/3 (the Gemma layouts are in gemma.py)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..config import Config
from .layout import Family, activation_from_hf, activation_to_hf, first_of, require, require_moe


def rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE fields from either the transformers 5 ``rope_parameters`` dict or the older flat fields."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}

    def get(name: str, default: Any = None) -> Any:  # rope_parameters first, then the legacy rope_scaling dict
        return first_of(params, name, default=legacy.get(name, default))

    theta = first_of(params, "rope_theta", default=first_of(hf, "rope_theta", "rotary_emb_base", default=10000.0))
    kind = first_of(params, "rope_type", "type", default=first_of(legacy, "rope_type", "type", default="default"))
    out: dict[str, Any] = {"rope_theta": float(theta)}
    fraction = first_of(params, "partial_rotary_factor", default=first_of(hf, "partial_rotary_factor", "rotary_pct"))
    if fraction is not None:
        out["rotary_fraction"] = float(fraction)
    read = _ROPE_KINDS.get("longrope" if kind == "su" else kind)  # "su": the name of the first Phi-3 releases
    require(read is not None or kind == "default",
            f"rope type {kind!r} is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)")
    if read is not None:
        out.update(read(get, hf))
    return out


def _rope_plain(kind: str) -> Callable[[Callable, dict[str, Any]], dict[str, Any]]:
    return lambda get, hf: dict(rope_scaling=kind, rope_scaling_factor=float(get("factor")))


def _rope_llama3(get: Callable, hf: dict[str, Any]) -> dict[str, Any]:
    return dict(rope_scaling="llama3", rope_scaling_factor=float(get("factor")),
                rope_low_freq_factor=float(get("low_freq_factor", 1.0)),
                rope_high_freq_factor=float(get("high_freq_factor", 4.0)),
                rope_original_max_seq_len=int(get("original_max_position_embeddings",
                                                  hf.get("max_position_embeddings"))))


def _rope_yarn(get: Callable, hf: dict[str, Any]) -> dict[str, Any]:
    require(not get("mscale") and not get("mscale_all_dim"),
            "yarn with mscale / mscale_all_dim (DeepSeek's variant) is not supported")
    require(get("truncate", True), "yarn with truncate=false is not supported")
    original = get("original_max_position_embeddings", hf.get("max_position_embeddings"))
    factor = get("factor") if get("factor") is not None else hf["max_position_embeddings"] / original
    attention = get("attention_factor")
    return dict(rope_scaling="yarn", rope_scaling_factor=float(factor), rope_original_max_seq_len=int(original),
                rope_beta_fast=float(get("beta_fast") or 32.0), rope_beta_slow=float(get("beta_slow") or 1.0),
                rope_attention_factor=None if attention is None else float(attention))


def _rope_longrope(get: Callable, hf: dict[str, Any]) -> dict[str, Any]:
    original = get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    require(original is not None, "longrope needs original_max_position_embeddings (the pre-training context)")
    factor = get("factor") if get("factor") is not None else hf["max_position_embeddings"] / original
    attention = get("attention_factor")
    return dict(rope_scaling="longrope", rope_scaling_factor=float(factor), rope_original_max_seq_len=int(original),
                rope_short_factor=[float(x) for x in get("short_factor", [])],
                rope_long_factor=[float(x) for x in get("long_factor", [])],
                rope_attention_factor=None if attention is None else float(attention))


# transformers' rope_type -> the reader of its parameters
_ROPE_KINDS: dict[str, Callable[[Callable, dict[str, Any]], dict[str, Any]]] = {
    "linear": _rope_plain("linear"), "dynamic": _rope_plain("dynamic"), "llama3": _rope_llama3, "yarn": _rope_yarn,
    "longrope": _rope_longrope}


def rope_to_hf(cfg: Config) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_theta": cfg.rope.theta, "rope_type": "default"}
    if cfg.rope.fraction != 1.0:
        params["partial_rotary_factor"] = cfg.rope.fraction
    if cfg.rope.scaling in ("linear", "dynamic"):
        params.update(rope_type=cfg.rope.scaling, factor=cfg.rope.factor)
    if cfg.rope.scaling == "yarn":
        params.update(rope_type="yarn", factor=cfg.rope.factor, beta_fast=cfg.rope.beta_fast,
                      beta_slow=cfg.rope.beta_slow, original_max_position_embeddings=cfg.rope.original_max_seq_len)
        if cfg.rope.attention_factor is not None:
            params["attention_factor"] = cfg.rope.attention_factor
    if cfg.rope.scaling == "longrope":
        params.update(rope_type="longrope", factor=cfg.rope.factor, short_factor=cfg.rope.short_factor,
                      long_factor=cfg.rope.long_factor, original_max_position_embeddings=cfg.rope.original_max_seq_len)
        if cfg.rope.attention_factor is not None:
            params["attention_factor"] = cfg.rope.attention_factor
    if cfg.rope.scaling == "llama3":
        params.update(rope_type="llama3", factor=cfg.rope.factor, low_freq_factor=cfg.rope.low_freq_factor,
                      high_freq_factor=cfg.rope.high_freq_factor,
                      original_max_position_embeddings=cfg.rope.original_max_seq_len)
    require(cfg.rope.scaling != "ntk", "static NTK rope scaling has no transformers config equivalent")
    return {"rope_parameters": params, "rope_theta": cfg.rope.theta}


# GPT-2 --------------------------------------------------------------------------------------------
def _gpt2_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(not hf.get("scale_attn_by_inverse_layer_idx"), "scale_attn_by_inverse_layer_idx=true is not supported")
    require(hf.get("scale_attn_weights", True), "scale_attn_weights=false is not supported")
    d = hf["n_embd"]
    return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
                d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"], pos="learned",
                ffn=activation_from_hf(hf.get("activation_function", "gelu_new"), "activation_function"),
                norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                tie_embeddings=hf.get("tie_word_embeddings", True))


def _gpt2_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.attn_bias and cfg.mlp_bias and cfg.norm_bias and cfg.n_kv_heads == cfg.n_heads,
             "GPT-2 layout needs biases everywhere and multi-head attention")
    return dict(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                n_positions=cfg.max_seq_len, activation_function=activation_to_hf(cfg),
                layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                attn_pdrop=cfg.attn_dropout)


def _gpt2_keys(cfg: Config) -> list[tuple[str, str]]:
    h = "transformer.h.{i}."
    return [("embed", "transformer.wte"), ("pos_embed", "transformer.wpe"), ("norm", "transformer.ln_f"),
            ("lm_head", "lm_head"), ("blocks.{i}.attn_norm", h + "ln_1"), ("blocks.{i}.mlp_norm", h + "ln_2"),
            ("blocks.{i}.attn.qkv", h + "attn.c_attn"), ("blocks.{i}.attn.o_proj", h + "attn.c_proj"),
            ("blocks.{i}.mlp.up_proj", h + "mlp.c_fc"), ("blocks.{i}.mlp.down_proj", h + "mlp.c_proj")]


# OPT ----------------------------------------------------------------------------------------------
def _opt_config(hf: dict[str, Any]) -> dict[str, Any]:
    d = hf["hidden_size"]
    require(hf.get("word_embed_proj_dim", d) == d,
             f"word_embed_proj_dim={hf.get('word_embed_proj_dim')} != hidden_size={d} (OPT-350m's projected "
             "embeddings) is not supported")
    require(hf.get("layer_norm_elementwise_affine", True), "layer_norm_elementwise_affine=false is not supported")
    pre = hf.get("do_layer_norm_before", True)
    bias = hf.get("enable_bias", True)
    return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                n_heads=hf["num_attention_heads"], d_ff=hf["ffn_dim"], max_seq_len=hf["max_position_embeddings"],
                pos="learned", pos_offset=2, pos_from_mask=True,
                ffn=activation_from_hf(hf.get("activation_function", "relu"), "activation_function"),
                norm="layernorm", norm_placement="pre" if pre else "post",
                final_norm=pre and not hf.get("_remove_final_layer_norm", False),
                attn_bias=bias, attn_out_bias=bias, mlp_bias=bias, tie_embeddings=hf.get("tie_word_embeddings", True))


def _opt_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos_offset == 2 and cfg.pos_from_mask and cfg.attn_bias == cfg.mlp_bias == cfg.attn_out_bias,
             "OPT layout needs pos_offset=2, pos_from_mask=True and one bias flag for all linears")
    return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                ffn_dim=cfg.d_ff, max_position_embeddings=cfg.max_seq_len, word_embed_proj_dim=cfg.d_model,
                activation_function=activation_to_hf(cfg), do_layer_norm_before=cfg.norm_placement == "pre",
                enable_bias=cfg.attn_bias, dropout=cfg.dropout, attention_dropout=cfg.attn_dropout)


def _opt_keys(cfg: Config) -> list[tuple[str, str]]:
    d, h = "model.decoder.", "model.decoder.layers.{i}."
    return [("embed", d + "embed_tokens"), ("pos_embed", d + "embed_positions"), ("norm", d + "final_layer_norm"),
            ("lm_head", "lm_head"), ("blocks.{i}.attn_norm", h + "self_attn_layer_norm"),
            ("blocks.{i}.mlp_norm", h + "final_layer_norm"), ("blocks.{i}.attn.q_proj", h + "self_attn.q_proj"),
            ("blocks.{i}.attn.k_proj", h + "self_attn.k_proj"), ("blocks.{i}.attn.v_proj", h + "self_attn.v_proj"),
            ("blocks.{i}.attn.o_proj", h + "self_attn.out_proj"), ("blocks.{i}.mlp.up_proj", h + "fc1"),
            ("blocks.{i}.mlp.down_proj", h + "fc2")]


# GPT-NeoX (Pythia, Dolly v2) ------------------------------------------------------------------------
def _neox_config(hf: dict[str, Any]) -> dict[str, Any]:
    parallel = hf.get("use_parallel_residual", True)
    bias = hf.get("attention_bias", True)
    return dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                max_seq_len=hf["max_position_embeddings"], pos="rope", **rope_from_hf(hf),
                ffn=activation_from_hf(hf.get("hidden_act", "gelu"), "hidden_act"), norm="layernorm",
                norm_eps=hf.get("layer_norm_eps", 1e-5), residual="parallel" if parallel else "sequential",
                attn_bias=bias, attn_out_bias=bias, tie_embeddings=hf.get("tie_word_embeddings", False))


def _neox_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "rope" and not cfg.shared_norm and cfg.n_kv_heads == cfg.n_heads and cfg.mlp_bias,
             "GPT-NeoX layout needs rope, multi-head attention, two norms and MLP biases")
    return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len, hidden_act=activation_to_hf(cfg),
                layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.residual == "parallel",
                attention_bias=cfg.attn_bias, rotary_pct=cfg.rope.fraction, **rope_to_hf(cfg))


def _neox_keys(cfg: Config) -> list[tuple[str, str]]:
    h = "gpt_neox.layers.{i}."
    return [("embed", "gpt_neox.embed_in"), ("norm", "gpt_neox.final_layer_norm"), ("lm_head", "embed_out"),
            ("blocks.{i}.attn_norm", h + "input_layernorm"), ("blocks.{i}.mlp_norm", h + "post_attention_layernorm"),
            ("blocks.{i}.attn.qkv", h + "attention.query_key_value"), ("blocks.{i}.attn.o_proj", h + "attention.dense"),
            ("blocks.{i}.mlp.up_proj", h + "mlp.dense_h_to_4h"), ("blocks.{i}.mlp.down_proj", h + "mlp.dense_4h_to_h")]


# BLOOM (BigScience, 2022): ALiBi, a LayerNorm on the embeddings, q/k/v fused per head, tanh GeLU, biases
def _bloom_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(not hf.get("apply_residual_connection_post_layernorm", False),
            "apply_residual_connection_post_layernorm=true is not supported")
    d = first_of(hf, "hidden_size", "n_embed")
    return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=first_of(hf, "n_layer", "num_hidden_layers"),
                n_heads=first_of(hf, "n_head", "num_attention_heads"), d_ff=4 * d,
                max_seq_len=hf.get("seq_length") or 2048, pos="alibi", ffn="gelu_tanh", norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), embed_norm=True,
                tie_embeddings=hf.get("tie_word_embeddings", True))


def _bloom_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "alibi" and cfg.embed_norm and cfg.norm == "layernorm" and cfg.d_ff == 4 * cfg.d_model
            and cfg.n_kv_heads == cfg.n_heads and cfg.attn_bias and cfg.mlp_bias and cfg.ffn == "gelu_tanh",
            "BLOOM layout needs ALiBi, an embedding LayerNorm, d_ff = 4 d_model, multi-head attention, biases and "
            "the tanh GeLU")
    return dict(hidden_size=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, layer_norm_epsilon=cfg.norm_eps,
                seq_length=cfg.max_seq_len, hidden_dropout=cfg.dropout, attention_dropout=cfg.attn_dropout,
                apply_residual_connection_post_layernorm=False)


def _bloom_keys(cfg: Config) -> list[tuple[str, str]]:
    h = "transformer.h.{i}."
    return [("embed", "transformer.word_embeddings"), ("embed_norm", "transformer.word_embeddings_layernorm"),
            ("norm", "transformer.ln_f"), ("lm_head", "lm_head"),
            ("blocks.{i}.attn_norm", h + "input_layernorm"), ("blocks.{i}.mlp_norm", h + "post_attention_layernorm"),
            ("blocks.{i}.attn.qkv", h + "self_attention.query_key_value"),
            ("blocks.{i}.attn.o_proj", h + "self_attention.dense"),
            ("blocks.{i}.mlp.up_proj", h + "mlp.dense_h_to_4h"), ("blocks.{i}.mlp.down_proj", h + "mlp.dense_4h_to_h")]


# Falcon -------------------------------------------------------------------------------------------
def _falcon_new_arch(cfg: Config) -> bool:
    return cfg.n_kv_heads not in (1, cfg.n_heads) or (cfg.residual == "parallel" and not cfg.shared_norm)


def _falcon_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(not hf.get("alibi", False), "Falcon with alibi=true is not supported (rotary Falcon only)")
    H, d = hf["num_attention_heads"], hf["hidden_size"]
    new = hf.get("new_decoder_architecture", False)
    if new:
        K = hf.get("num_kv_heads") or H
        parallel, shared = True, (hf.get("num_ln_in_parallel_attn") or 2) == 1
    else:
        K = 1 if hf.get("multi_query", True) else H
        parallel = hf.get("parallel_attn", True)
        shared = parallel
    bias = hf.get("bias", False)
    return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=H, n_kv_heads=K,
                d_ff=hf.get("ffn_hidden_size") or 4 * d, max_seq_len=hf.get("max_position_embeddings", 2048),
                pos="rope", **rope_from_hf(hf), ffn=activation_from_hf(hf.get("activation", "gelu"), "activation"),
                norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                residual="parallel" if parallel else "sequential", shared_norm=shared,
                attn_bias=bias, attn_out_bias=bias, mlp_bias=bias, tie_embeddings=hf.get("tie_word_embeddings", True))


def _falcon_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "rope" and cfg.rope.fraction == 1.0 and cfg.attn_bias == cfg.mlp_bias == cfg.attn_out_bias,
             "Falcon layout needs full rope and one bias flag for all linears")
    new = _falcon_new_arch(cfg)
    return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_kv_heads=cfg.n_kv_heads, multi_query=cfg.n_kv_heads == 1, new_decoder_architecture=new,
                parallel_attn=cfg.residual == "parallel", num_ln_in_parallel_attn=(1 if cfg.shared_norm else 2) if new
                else None, bias=cfg.attn_bias, alibi=False, ffn_hidden_size=cfg.d_ff, activation=activation_to_hf(cfg),
                layer_norm_epsilon=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len, **rope_to_hf(cfg))


def _falcon_keys(cfg: Config) -> list[tuple[str, str]]:
    h = "transformer.h.{i}."
    new = _falcon_new_arch(cfg)
    norms = [("blocks.{i}.attn_norm", h + ("ln_attn" if new and not cfg.shared_norm else "input_layernorm"))]
    if not cfg.shared_norm:
        norms.append(("blocks.{i}.mlp_norm", h + ("ln_mlp" if new else "post_attention_layernorm")))
    return [("embed", "transformer.word_embeddings"), ("norm", "transformer.ln_f"), ("lm_head", "lm_head"), *norms,
            ("blocks.{i}.attn.qkv", h + "self_attention.query_key_value"),
            ("blocks.{i}.attn.o_proj", h + "self_attention.dense"),
            ("blocks.{i}.mlp.up_proj", h + "mlp.dense_h_to_4h"), ("blocks.{i}.mlp.down_proj", h + "mlp.dense_4h_to_h")]


def _falcon_groups(cfg: Config) -> int:
    # new architecture: one group per kv head [G q, 1 k, 1 v]; multi-query: one group [H q, 1 k, 1 v];
    # old multi-head: per head [q, k, v].
    if _falcon_new_arch(cfg):
        return cfg.n_kv_heads
    return 1 if cfg.n_kv_heads == 1 else cfg.n_heads


# MPT ----------------------------------------------------------------------------------------------
def _mpt_config(hf: dict[str, Any]) -> dict[str, Any]:
    attn = hf.get("attn_config") or {}
    require(attn.get("alibi", False), "MPT without ALiBi (learned positions) is not supported")
    for field in ("clip_qkv", "softmax_scale"):
        require(attn.get(field) is None, f"attn_config.{field}={attn.get(field)} is not supported")
    require(not attn.get("qk_ln", False) and not attn.get("prefix_lm", False), "MPT qk_ln/prefix_lm are not supported")
    require(hf.get("logit_scale") is None, "MPT logit_scale is not supported")
    H = hf["n_heads"]
    require(H & (H - 1) == 0, f"n_heads={H}: MPT orders ALiBi slopes differently from the paper when n_heads is "
             "not a power of two; only powers of two are supported")
    bias = not hf.get("no_bias", True)
    d = hf["d_model"]
    return dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layers"], n_heads=H,
                d_ff=int(hf.get("expansion_ratio", 4) * d), max_seq_len=hf["max_seq_len"], pos="alibi",
                alibi_max_bias=float(attn.get("alibi_bias_max", 8)), ffn="gelu", norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_bias=bias, attn_bias=bias, attn_out_bias=bias,
                mlp_bias=bias, tie_embeddings=True)


def _mpt_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "alibi" and cfg.ffn == "gelu" and cfg.tie_embeddings and cfg.n_kv_heads == cfg.n_heads
             and cfg.d_ff % cfg.d_model == 0, "MPT layout needs alibi, gelu, tied embeddings, MHA, d_ff = k * d_model")
    return dict(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                expansion_ratio=cfg.d_ff // cfg.d_model, max_seq_len=cfg.max_seq_len, no_bias=not cfg.attn_bias,
                layer_norm_epsilon=cfg.norm_eps,
                attn_config={"alibi": True, "alibi_bias_max": _int_if_whole(cfg.score_bias.alibi_max_bias)})


def _int_if_whole(x: float) -> float | int:
    # transformers' MptAttentionConfig validates alibi_bias_max as an int
    return int(x) if float(x).is_integer() else x


def _mpt_keys(cfg: Config) -> list[tuple[str, str]]:
    h = "transformer.blocks.{i}."
    return [("embed", "transformer.wte"), ("norm", "transformer.norm_f"), ("lm_head", "lm_head"),
            ("blocks.{i}.attn_norm", h + "norm_1"), ("blocks.{i}.mlp_norm", h + "norm_2"),
            ("blocks.{i}.attn.qkv", h + "attn.Wqkv"), ("blocks.{i}.attn.o_proj", h + "attn.out_proj"),
            ("blocks.{i}.mlp.up_proj", h + "ffn.up_proj"), ("blocks.{i}.mlp.down_proj", h + "ffn.down_proj")]


# Llama, Mistral, Mixtral ---------------------------------------------------------------------------
_GATED_FROM_HF = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh",
                  "gelu_new": "geglu_tanh", "relu": "reglu"}
_GATED_TO_HF = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh", "reglu": "relu"}


def llama_config(hf: dict[str, Any]) -> dict[str, Any]:
    act = hf.get("hidden_act", "silu")
    require(act in _GATED_FROM_HF, f"hidden_act={act!r} is not supported; supported: {', '.join(_GATED_FROM_HF)}")
    H = hf["num_attention_heads"]
    out = dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=H,
               n_kv_heads=hf.get("num_key_value_heads") or H, head_dim=hf.get("head_dim"),
               d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 4096), pos="rope",
               **rope_from_hf(hf), ffn=_GATED_FROM_HF[act], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
               attn_bias=hf.get("attention_bias", False), attn_out_bias=hf.get("attention_bias", False),
               mlp_bias=hf.get("mlp_bias", False), tie_embeddings=hf.get("tie_word_embeddings", False),
               sliding_window=hf.get("sliding_window"))
    if "num_local_experts" in hf:
        out.update(n_experts=hf["num_local_experts"], top_k=hf.get("num_experts_per_tok", 2),
                   router="topk_softmax", router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.02))
    return out


def llama_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "rope" and cfg.norm == "rmsnorm" and cfg.gated and cfg.residual == "sequential"
             and cfg.norm_placement == "pre", "Llama layout needs rope, rmsnorm, a gated FFN and pre-norm")
    out = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
               max_position_embeddings=cfg.max_seq_len, hidden_act=_GATED_TO_HF[cfg.ffn], rms_norm_eps=cfg.norm_eps,
               attention_bias=cfg.attn_bias, mlp_bias=cfg.mlp_bias, sliding_window=cfg.sliding_window,
               attention_dropout=cfg.attn_dropout, **rope_to_hf(cfg))
    if cfg.n_experts:
        require(cfg.family == "mixtral", f"the {cfg.family} layout has no experts (mixtral, qwen2_moe, qwen3_moe and "
                "olmoe have)")
        require_moe(cfg, routers=("topk_softmax",))
        out.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.moe.top_k,
                   router_aux_loss_coef=cfg.moe.router_aux_loss_coef)
    return out


def llama_keys(cfg: Config, *, fused: bool = False,
               moe: Callable[[str], list[tuple[str, str]]] | None = None) -> list[tuple[str, str]]:
    """The Llama module names, which Mistral, Mixtral, Qwen, Gemma, OLMo 2 and Phi-3 share: with q/k norms
    when the config has them, the norms named after the sublayer outputs for norm_placement='sublayer'
    (OLMo 2), four norms a layer for 'sandwich' (Gemma 2/3), and with ``fused`` one qkv_proj and one
    gate_up_proj (Phi-3). ``moe`` names an MoE layer's modules from the layer prefix (default Mixtral's)."""
    h = "model.layers.{i}."
    norms = (("post_attention_layernorm", "post_feedforward_layernorm") if cfg.norm_placement == "sublayer"
             else ("input_layernorm", "pre_feedforward_layernorm") if cfg.norm_placement == "sandwich"
             else ("input_layernorm", "post_attention_layernorm"))
    keys = [("embed", "model.embed_tokens"), ("norm", "model.norm"), ("lm_head", "lm_head"),
            ("blocks.{i}.attn_norm", h + norms[0]), ("blocks.{i}.mlp_norm", h + norms[1])]
    if cfg.norm_placement == "sandwich":  # Gemma 2/3: the norms on the sublayer outputs
        keys += [("blocks.{i}.post_attn_norm", h + "post_attention_layernorm"),
                 ("blocks.{i}.post_mlp_norm", h + "post_feedforward_layernorm")]
    if fused:
        return [*keys, ("blocks.{i}.attn.qkv", h + "self_attn.qkv_proj"),
                ("blocks.{i}.attn.o_proj", h + "self_attn.o_proj"), ("blocks.{i}.mlp.gate_up", h + "mlp.gate_up_proj"),
                ("blocks.{i}.mlp.down_proj", h + "mlp.down_proj")]
    keys += [(f"blocks.{{i}}.attn.{p}_proj", h + f"self_attn.{p}_proj") for p in "qkvo"]
    if cfg.qk_norm != "none":
        keys += [(f"blocks.{{i}}.attn.{p}_norm", h + f"self_attn.{p}_norm") for p in "qk"]
    if cfg.n_experts:
        keys += (moe or _mixtral_moe_keys)(h)
    if not cfg.n_experts or cfg.moe.moe_layers is not None:  # the dense layers among MoE ones are named as Llama's
        keys += [(f"blocks.{{i}}.mlp.{p}_proj", h + f"mlp.{p}_proj") for p in ("gate", "up", "down")]
    return keys


def _mixtral_moe_keys(h: str) -> list[tuple[str, str]]:
    m = h + "block_sparse_moe."
    return [("blocks.{i}.mlp.router", m + "gate"), ("blocks.{i}.mlp.experts.{e}.gate_proj", m + "experts.{e}.w1"),
            ("blocks.{i}.mlp.experts.{e}.down_proj", m + "experts.{e}.w2"),
            ("blocks.{i}.mlp.experts.{e}.up_proj", m + "experts.{e}.w3")]


# Phi-3 / Phi-3.5-mini (Abdin et al., 2024): the Llama architecture with q/k/v fused into qkv_proj (q rows,
# then k, then v) and gate/up fused into gate_up_proj (gate rows first). The 128k variants and Phi-3.5 use
# LongRoPE (rope_scaling='longrope'), read by rope_from_hf.
def _phi3_config(hf: dict[str, Any]) -> dict[str, Any]:
    out = llama_config(hf)
    return {**out, "attn_bias": False, "attn_out_bias": False, "mlp_bias": False}


def _phi3_to_hf(cfg: Config) -> dict[str, Any]:
    require(not (cfg.attn_bias or cfg.attn_out_bias or cfg.mlp_bias), "Phi-3 layout has no biases")
    out = llama_to_hf(cfg)
    for key in ("attention_bias", "mlp_bias", "head_dim"):
        out.pop(key)
    require(cfg.head_dim * cfg.n_heads == cfg.d_model, "Phi-3 layout derives head_dim from hidden_size")
    return {**out, "original_max_position_embeddings": cfg.rope.original_max_seq_len or cfg.max_seq_len}


# OLMo 2 (OLMo team, 2024): the Llama parts with the norms moved onto each sublayer's output (x + norm(f(x)),
# no input norm) and an RMSNorm over the whole q and k projections.
def _olmo2_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {**llama_config(hf), "norm_placement": "sublayer", "qk_norm": "full"}


def _olmo2_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.norm_placement == "sublayer" and cfg.qk_norm == "full" and cfg.attn_bias == cfg.attn_out_bias,
            "OLMo 2 layout needs norm_placement='sublayer', qk_norm='full' and one attention_bias")
    out = llama_to_hf(cfg.replace(norm_placement="pre"))  # the rest is the Llama layout
    out.pop("mlp_bias")
    return out


def _qwen_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(not hf.get("use_sliding_window", False), "use_sliding_window=true (a window on the layers from "
            "max_window_layers on) is not supported; the released Qwen2/2.5/3 checkpoints leave it off")
    out = llama_config({**hf, "sliding_window": None})
    if hf.get("model_type") == "qwen3":
        out.update(qk_norm="head", attn_bias=hf.get("attention_bias", False),
                   attn_out_bias=hf.get("attention_bias", False))
    else:
        out.update(attn_bias=True, attn_out_bias=False)
    return out


def _qwen_to_hf(family: str) -> Callable[[Config], dict[str, Any]]:
    def to_hf(cfg: Config) -> dict[str, Any]:
        if family == "qwen3":
            require(cfg.qk_norm == "head" and cfg.attn_bias == cfg.attn_out_bias,
                    "Qwen3 layout needs qk_norm='head' and one attention_bias for q/k/v/o")
        else:
            require(cfg.attn_bias and not cfg.attn_out_bias and cfg.qk_norm == "none",
                    "Qwen2 layout needs biased q/k/v (attn_bias=True), an unbiased o_proj and no qk_norm")
        require(cfg.sliding_window is None, "the Qwen layouts here have no sliding window")
        out = llama_to_hf(cfg)
        if family == "qwen2":  # its biases are fixed by the architecture, not a config field
            out.pop("attention_bias")
        out.pop("mlp_bias")
        return {**out, "use_sliding_window": False, "sliding_window": None}
    return to_hf


DECODERS: dict[str, Family] = {
    "gpt2": Family("gpt2", "GPT2LMHeadModel", _gpt2_config, _gpt2_to_hf, _gpt2_keys, qkv_groups=lambda c: 1,
                    conv1d=True, ignored=(r".*\.attn\.bias", r".*\.attn\.masked_bias")),
    "opt": Family("opt", "OPTForCausalLM", _opt_config, _opt_to_hf, _opt_keys),
    "gpt_neox": Family("gpt_neox", "GPTNeoXForCausalLM", _neox_config, _neox_to_hf, _neox_keys,
                        qkv_groups=lambda c: c.n_heads,
                        ignored=(r".*\.attention\.(bias|masked_bias)", r".*rotary_emb\.inv_freq")),
    "bloom": Family("bloom", "BloomForCausalLM", _bloom_config, _bloom_to_hf, _bloom_keys,
                     qkv_groups=lambda c: c.n_heads),
    "falcon": Family("falcon", "FalconForCausalLM", _falcon_config, _falcon_to_hf, _falcon_keys,
                      qkv_groups=_falcon_groups, ignored=(r".*rotary_emb\.inv_freq",)),
    "mpt": Family("mpt", "MptForCausalLM", _mpt_config, _mpt_to_hf, _mpt_keys, qkv_groups=lambda c: 1),
    "llama": Family("llama", "LlamaForCausalLM", llama_config, llama_to_hf, llama_keys,
                     ignored=(r".*rotary_emb\.inv_freq",)),
    "mistral": Family("mistral", "MistralForCausalLM", llama_config, llama_to_hf, llama_keys,
                       ignored=(r".*rotary_emb\.inv_freq",)),
    "mixtral": Family("mixtral", "MixtralForCausalLM", llama_config, llama_to_hf, llama_keys,
                       ignored=(r".*rotary_emb\.inv_freq",)),
    "phi3": Family("phi3", "Phi3ForCausalLM", _phi3_config, _phi3_to_hf, partial(llama_keys, fused=True),
                    qkv_groups=lambda c: 1, fused_gate_up=True, ignored=(r".*rotary_emb\.inv_freq",)),
    "olmo2": Family("olmo2", "Olmo2ForCausalLM", _olmo2_config, _olmo2_to_hf, llama_keys,
                     ignored=(r".*rotary_emb\.inv_freq",)),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", _qwen_config, _qwen_to_hf("qwen2"), llama_keys,
                     ignored=(r".*rotary_emb\.inv_freq",)),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", _qwen_config, _qwen_to_hf("qwen3"), llama_keys,
                     ignored=(r".*rotary_emb\.inv_freq",)),
}
