"""HF layouts of the mixture-of-experts families beyond Mixtral (decoders.py): Qwen2-MoE and Qwen3-MoE (softmax
then top-k, renormalised when norm_topk_prob; Qwen2-MoE's sigmoid-gated shared expert; dense layers by
decoder_sparse_step / mlp_only_layers), OLMoE, and SwitchTransformers (the T5 encoder-decoder with top-1
routing every other layer, a fixed expert capacity per sequence, and its z-loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from .decoders import _qwen_config, _qwen_to_hf, llama_config, llama_keys, llama_to_hf
from .encoders import _t5_config, _t5_keys, _t5_to_hf
from .layout import Family, activation_from_hf, activation_to_hf, first_of, require, require_moe


def _decoder_moe(hf: dict[str, Any], *, shared: bool) -> dict[str, Any]:
    """Qwen-style MoE fields: which layers route, the routers' renormalisation, expert widths."""
    E, L = first_of(hf, "num_experts", "num_local_experts", default=0), hf["num_hidden_layers"]
    require(E > 1, f"num_experts={E}: a dense model has no MoE layers; load it as its dense family")
    step, only = hf.get("decoder_sparse_step") or 1, set(hf.get("mlp_only_layers") or [])
    layers = [i for i in range(L) if i not in only and (i + 1) % step == 0]
    out = dict(n_experts=E, top_k=hf.get("num_experts_per_tok", 2),
               router="topk_softmax" if hf.get("norm_topk_prob", False) else "softmax_topk",
               router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
               router_z_loss_coef=hf.get("router_z_loss_coef", 0.0),
               expert_d_ff=hf.get("moe_intermediate_size") or hf["intermediate_size"],
               moe_layers=None if len(layers) == L else layers)
    if shared and hf.get("shared_expert_intermediate_size"):
        out.update(shared_expert_d_ff=hf["shared_expert_intermediate_size"], shared_expert_gate=True)
    return out


def _decoder_moe_to_hf(cfg: Config, *, shared: bool) -> dict[str, Any]:
    require_moe(cfg, routers=("topk_softmax", "softmax_topk"), shared=shared, pattern=True, width=True)
    require(not shared or cfg.moe.shared_expert_gate == bool(cfg.moe.shared_expert_d_ff),
            f"{cfg.family} layout gates its shared expert: shared_expert_gate must be True with one")
    dense = [i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)]
    out = dict(num_experts=cfg.n_experts, num_experts_per_tok=cfg.moe.top_k,
               norm_topk_prob=cfg.moe.router == "topk_softmax",
               router_aux_loss_coef=cfg.moe.router_aux_loss_coef, moe_intermediate_size=cfg.moe.expert_d_ff or cfg.d_ff,
               decoder_sparse_step=1, mlp_only_layers=dense)
    if cfg.moe.router_z_loss_coef:
        out["router_z_loss_coef"] = cfg.moe.router_z_loss_coef  # a groundup training setting transformers ignores
    if shared:  # transformers builds a shared expert of this width (0: none) in every MoE layer
        out["shared_expert_intermediate_size"] = cfg.moe.shared_expert_d_ff
    return out


def _qwen_moe_keys(h: str) -> list[tuple[str, str]]:
    m, projs = h + "mlp.", ("gate", "up", "down")
    return [("blocks.{i}.mlp.router", m + "gate"), ("blocks.{i}.mlp.shared_gate", m + "shared_expert_gate"),
            *[(f"blocks.{{i}}.mlp.experts.{{e}}.{p}_proj", m + f"experts.{{e}}.{p}_proj") for p in projs],
            *[(f"blocks.{{i}}.mlp.shared.{p}_proj", m + f"shared_expert.{p}_proj") for p in projs]]


def _qwen_moe_config(family: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def to_config(hf: dict[str, Any]) -> dict[str, Any]:
        dense = {k: v for k, v in hf.items() if k != "num_local_experts"}  # (transformers' alias of num_experts)
        out = _qwen_config({**dense, "model_type": "qwen3" if family == "qwen3_moe" else "qwen2"})
        if family == "qwen2_moe":
            out.update(attn_bias=hf.get("qkv_bias", True))
        return {**out, **_decoder_moe(hf, shared=family == "qwen2_moe")}
    return to_config


def _qwen_moe_to_hf(family: str) -> Callable[[Config], dict[str, Any]]:
    dense = _qwen_to_hf("qwen3" if family == "qwen3_moe" else "qwen2")

    def to_hf(cfg: Config) -> dict[str, Any]:
        if family == "qwen2_moe":  # qkv_bias is a field here, unlike Qwen2's fixed biases
            require(not cfg.attn_out_bias and cfg.qk_norm == "none",
                    "Qwen2-MoE layout has an unbiased o_proj and no qk_norm")
            body = {**llama_to_hf(cfg.replace(n_experts=0, moe_layers=None)), "qkv_bias": cfg.attn_bias}
            for key in ("attention_bias", "mlp_bias"):
                body.pop(key)
        else:
            body = dense(cfg.replace(n_experts=0, moe_layers=None))
        return {**body, **_decoder_moe_to_hf(cfg, shared=family == "qwen2_moe"), "use_sliding_window": False}
    return to_hf


# OLMoE (Muennighoff et al., 2024): Llama-style pre-norm blocks, an RMSNorm over the whole q and k projections, 64
# experts top-8 in every layer, softmax then top-k without renormalisation
def _olmoe_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf.get("clip_qkv") is None, f"clip_qkv={hf.get('clip_qkv')} (clamped q/k/v) is not supported")
    out = llama_config({k: v for k, v in hf.items() if k != "num_local_experts"})
    return {**out, "qk_norm": "full", **_decoder_moe(hf, shared=False)}


def _olmoe_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.qk_norm == "full" and cfg.attn_bias == cfg.attn_out_bias and cfg.moe_layer_count == cfg.n_layers,
            "OLMoE layout needs qk_norm='full', one attention_bias and experts in every layer")
    require(cfg.moe.expert_d_ff in (None, cfg.d_ff), "OLMoE layout sizes experts with intermediate_size: expert_d_ff")
    body = llama_to_hf(cfg.replace(n_experts=0, qk_norm="none"))
    body.pop("mlp_bias")
    moe = _decoder_moe_to_hf(cfg, shared=False)
    for key in ("moe_intermediate_size", "decoder_sparse_step", "mlp_only_layers"):
        moe.pop(key)
    return {**body, **moe, "clip_qkv": None}


# SwitchTransformers (Fedus et al., 2021): T5 v1.0 with every sparse_step-th FFN (i % step == 1) a Switch layer
def _sparse_layers(n: int, n_sparse: int) -> list[int]:
    """transformers' rule: step = n // n_sparse; layer i is sparse when i % step == 1 (every layer at step 1)."""
    if n_sparse <= 0:
        return []
    step = n // n_sparse
    return [i for i in range(n) if step == 1 or i % step == 1]


def _switch_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(not hf.get("router_ignore_padding_tokens", False), "router_ignore_padding_tokens=true is not supported")
    require(hf.get("router_dtype", "float32") == "float32", f"router_dtype={hf.get('router_dtype')!r}: groundup "
            "routes in float32")
    out = _t5_config({**hf, "architectures": ["T5ForConditionalGeneration"],
                      "feed_forward_proj": hf.get("dense_act_fn", "relu")})
    L, D = hf["num_layers"], hf.get("num_decoder_layers") or hf["num_layers"]
    layers = (_sparse_layers(L, hf.get("num_sparse_encoder_layers", 3))
              + [L + i for i in _sparse_layers(D, hf.get("num_sparse_decoder_layers", 3))])
    return {**out, "ffn": activation_from_hf(hf.get("dense_act_fn", "relu"), "dense_act_fn"),
            "n_experts": hf.get("num_experts", 8), "top_k": 1, "router": "switch", "router_group": "sequence",
            "expert_capacity": hf.get("expert_capacity", 64), "router_bias": hf.get("router_bias", False),
            "router_jitter": float(hf.get("router_jitter_noise", 0.01)),
            "router_aux_loss_coef": hf.get("router_aux_loss_coef", 0.001),
            "router_z_loss_coef": hf.get("router_z_loss_coef", 0.001), "moe_layers": layers}


def _switch_to_hf(cfg: Config) -> dict[str, Any]:
    require_moe(cfg, routers=("switch",), group="sequence", capacity=True, pattern=True, bias=True)
    require(cfg.moe.expert_capacity is not None, "SwitchTransformers layout has a fixed expert_capacity (in tokens): "
            "set it instead of capacity_factor")
    require(not cfg.gated, f"ffn={cfg.ffn!r}: SwitchTransformers' experts are two matrices (wi, wo)")
    body = _t5_to_hf(cfg.replace(n_experts=0, moe_layers=None, router="topk_softmax", expert_capacity=None,
                                 router_group="batch", router_bias=False))
    body.pop("feed_forward_proj")
    counts = []
    for first, n in ((0, cfg.n_layers), (cfg.n_layers, cfg.n_decoder_layers)):
        mine = [i - first for i in range(first, first + n) if cfg.is_moe_layer(i)]
        fits = [k for k in range(n + 1) if _sparse_layers(n, k) == mine]
        require(bool(fits), f"moe_layers={cfg.moe.moe_layers}: SwitchTransformers can only make every k-th layer of a "
                "stack sparse (i % k == 1)")
        counts.append(fits[0])
    return {**body, "dense_act_fn": activation_to_hf(cfg), "num_experts": cfg.n_experts,
            "expert_capacity": cfg.moe.expert_capacity, "num_sparse_encoder_layers": counts[0],
            "num_sparse_decoder_layers": counts[1], "router_bias": cfg.moe.router_bias,
            "router_jitter_noise": cfg.moe.router_jitter, "router_aux_loss_coef": cfg.moe.router_aux_loss_coef,
            "router_z_loss_coef": cfg.moe.router_z_loss_coef, "router_dtype": "float32",
            "router_ignore_padding_tokens": False}


def _switch_keys(cfg: Config) -> list[tuple[str, str]]:
    keys = [(gu, hf.replace("DenseReluDense", "mlp")) for gu, hf in _t5_keys(cfg.replace(n_experts=0, moe_layers=None))]
    for stack, f in (("encoder", 1), ("decoder", 2)):
        g, h = f"{stack}.blocks.{{i}}.mlp.", f"{stack}.block.{{i}}.layer.{f}.mlp."
        keys += [(g + "router", h + "router.classifier"), (g + "experts.{e}.up_proj", h + "experts.expert_{e}.wi"),
                 (g + "experts.{e}.down_proj", h + "experts.expert_{e}.wo")]
    return keys


_ROPE = (r".*rotary_emb\.inv_freq",)
MOES: dict[str, Family] = {
    "qwen2_moe": Family("qwen2_moe", "Qwen2MoeForCausalLM", _qwen_moe_config("qwen2_moe"),
                        _qwen_moe_to_hf("qwen2_moe"), lambda c: llama_keys(c, moe=_qwen_moe_keys), ignored=_ROPE),
    "qwen3_moe": Family("qwen3_moe", "Qwen3MoeForCausalLM", _qwen_moe_config("qwen3_moe"),
                        _qwen_moe_to_hf("qwen3_moe"), lambda c: llama_keys(c, moe=_qwen_moe_keys), ignored=_ROPE),
    "olmoe": Family("olmoe", "OlmoeForCausalLM", _olmoe_config, _olmoe_to_hf,
                    lambda c: llama_keys(c, moe=_qwen_moe_keys), ignored=_ROPE),
    "switch_transformers": Family(
        "switch_transformers", "SwitchTransformersForConditionalGeneration", _switch_config, _switch_to_hf,
        _switch_keys, arch="seq2seq",
        ignored=(r"(encoder|decoder)\.embed_tokens\.weight",
                 r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")),
}
