"""transformers' Idefics v1 folders (IdeficsForVisionText2Text, the open Flamingo) in and out.

The layout: a CLIP-style tower under ``model.vision_model.`` (its width is ``embed_dim``), the perceiver
resampler's blocks as (attention, FFN) pairs, the gated cross-attention layers, and a Llama decoder whose
embedding and head are each split in two ("decoupled": the base vocabulary and ``additional_vocab_size`` new
rows trained alone). groundup keeps one table and one head of vocab + additional rows and splits them on write.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..multimodal import FlamingoConfig
from . import convert
from .convert import config_from_hf, state_dict_from_hf, state_dict_to_hf
from .layout import require


def config(hf: dict[str, Any], source: str) -> FlamingoConfig:
    v, p = hf.get("vision_config") or {}, hf.get("perceiver_config") or {}
    require(not hf.get("qk_layer_norms", False), "qk_layer_norms=True (normed cross-attention heads) is not supported")
    require(not p.get("qk_layer_norms_perceiver", False), "perceiver_config.qk_layer_norms_perceiver is not supported")
    require(hf.get("alpha_type", "float") in ("float", "vector"), f"alpha_type={hf.get('alpha_type')!r}")
    width = v.get("embed_dim", 768)
    vision = Config(arch="vision", d_model=width, n_layers=v.get("num_hidden_layers", 32),
                    n_heads=v.get("num_attention_heads", 16), d_ff=v.get("intermediate_size", 5120),
                    ffn={"gelu": "gelu", "quick_gelu": "quick_gelu"}.get(v.get("hidden_act", "gelu"), "gelu"),
                    norm_eps=v.get("layer_norm_eps", 1e-5), image_size=v.get("image_size", 224),
                    patch_size=v.get("patch_size", 14), num_channels=v.get("num_channels", 3), embed_norm=True,
                    final_norm=False, pool_norm=True, patch_bias=False, family="idefics_vision")
    resampler = None
    if hf.get("use_resampler", False):
        resampler = Config(arch="encoder", d_model=width, n_layers=p.get("resampler_depth", 6),
                           n_heads=p.get("resampler_n_heads", 16), head_dim=p.get("resampler_head_dim", 96),
                           d_ff=4 * width, ffn="relu", attn_bias=False, attn_out_bias=False, mlp_bias=False,
                           pos="none", family="idefics_perceiver")
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    extra = hf.get("additional_vocab_size", 0)
    llama = dict(model_type="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                 intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
                 num_attention_heads=hf["num_attention_heads"],
                 max_position_embeddings=hf.get("max_position_embeddings", 2048),
                 rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, hidden_act=hf.get("hidden_act", "silu"),
                 tie_word_embeddings=hf.get("tie_word_embeddings", False),
                 **{k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None})
    text = config_from_hf(llama, f"{source} (the language model)").replace(vocab_size=hf["vocab_size"] + extra)
    return FlamingoConfig(vision=vision, text=text, resampler=resampler,
                          n_latents=p.get("resampler_n_latents", 64), cross_every=hf.get("cross_layer_interval", 1),
                          gate_type=hf.get("alpha_type", "float"), image_token_id=hf.get("image_token_id"),
                          extra={"additional_vocab_size": extra})


def config_to_hf(cfg: FlamingoConfig, dtype: torch.dtype) -> dict[str, Any]:
    v, t, r = cfg.vision, cfg.text, cfg.resampler
    want = dict(cls_token=True, patch_bias=False, embed_norm=True, final_norm=False, pool_norm=True)
    bad = [f"{k}={v.value(k)!r}" for k, val in want.items() if v.value(k) != val]
    require(not bad, f"Idefics' vision tower is CLIP-shaped {want}; this one has {', '.join(bad)}")
    extra = int(cfg.extra.get("additional_vocab_size", 0))
    llama = convert.config_to_hf(t, dtype)
    require(t.family == "llama", f"Idefics' language model is Llama-shaped, not family={t.family!r}")
    body = dict(architectures=["IdeficsForVisionText2Text"], model_type="idefics", vocab_size=t.vocab_size - extra,
                additional_vocab_size=extra, hidden_size=t.d_model, intermediate_size=t.d_ff,
                num_hidden_layers=t.n_layers, num_attention_heads=t.n_heads, max_position_embeddings=t.max_seq_len,
                rms_norm_eps=t.norm_eps, rope_parameters={"rope_theta": t.rope.theta, "rope_type": "default"},
                hidden_act=llama.get("hidden_act", "silu"), tie_word_embeddings=t.tie_embeddings,
                cross_layer_interval=cfg.cross_every, alpha_type=cfg.gate_type, alpha_initializer="zeros",
                qk_layer_norms=False, use_resampler=r is not None, freeze_text_layers=True,
                freeze_vision_layers=True, dtype=str(dtype).removeprefix("torch."),
                vision_config=dict(model_type="idefics_vision", embed_dim=v.d_model, intermediate_size=v.d_ff,
                                   num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads,
                                   image_size=v.image.image_size, patch_size=v.image.patch_size,
                                   num_channels=v.image.num_channels,
                                   hidden_act=v.ffn, layer_norm_eps=v.norm_eps),
                **{k: getattr(t, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                   if getattr(t, k) is not None})
    if cfg.image_token_id is not None:
        body["image_token_id"] = cfg.image_token_id
    if r is not None:
        body["perceiver_config"] = dict(model_type="idefics_perciever", use_resampler=True,
                                        resampler_n_latents=cfg.n_latents, resampler_depth=r.n_layers,
                                        resampler_n_heads=r.n_heads, resampler_head_dim=r.head_dim,
                                        qk_layer_norms_perceiver=False)
    return body


def names(cfg: FlamingoConfig, n) -> None:
    """The tower, resampler and gated layers into a vision.Names (the LM goes through the llama layout)."""
    n.tower(cfg.vision, "vision_tower.", "model.vision_model.")
    if cfg.resampler is not None:
        n.tensors["resampler.latents"] = ("model.perceiver_resampler.latents", None)
        n.modules.append(("resampler.norm", "model.perceiver_resampler.layer_norm"))
        for i in range(cfg.resampler.n_layers):
            g, h = f"resampler.layers.{i}.", f"model.perceiver_resampler.blocks.{i}."
            pairs = {"context_norm": "0.context_layer_norm", "latents_norm": "0.latents_layer_norm",
                     "attn.q_proj": "0.q_proj", "attn.k_proj": "0.k_proj", "attn.v_proj": "0.v_proj",
                     "attn.o_proj": "0.output_proj", "mlp_norm": "1.ln", "mlp.up_proj": "1.fc",
                     "mlp.down_proj": "1.c_proj"}
            n.modules += [(g + a, h + b) for a, b in pairs.items()]
    for j in range(cfg.cross_layers):
        g, h = f"gated.{j}.", f"model.gated_cross_attn_layers.{j}."
        n.tensors[f"{g}alpha_attn"] = (f"{h}alpha_cross_attn", None)
        n.tensors[f"{g}alpha_dense"] = (f"{h}alpha_dense", None)
        n.modules += [(f"{g}cross_attn.{p}", f"{h}cross_attn.{p}") for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        n.modules += [(f"{g}attn_norm", f"{h}input_layernorm"), (f"{g}mlp_norm", f"{h}post_attention_layernorm")]
        n.modules += [(f"{g}mlp.{p}", f"{h}mlp.{p}") for p in ("gate_proj", "up_proj", "down_proj")]


LM_KEYS = ("model.layers.", "model.norm.", "model.embed_tokens.", "lm_head.")


def lm_from_hf(tensors: dict[str, torch.Tensor], cfg: FlamingoConfig) -> dict[str, torch.Tensor]:
    """The language model's tensors (groundup names, language_model. prefix), the decoupled rows joined."""
    lm = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith(LM_KEYS)]}
    for base, more in (("model.embed_tokens.weight", "model.embed_tokens.additional_embedding.weight"),
                       ("lm_head.weight", "lm_head.additional_fc.weight")):
        if more in lm:
            lm[base] = torch.cat([lm[base], lm.pop(more)])
    return {f"language_model.{k}": v for k, v in state_dict_from_hf(lm, cfg.text).items()}


def lm_to_hf(state: dict[str, torch.Tensor], cfg: FlamingoConfig) -> dict[str, torch.Tensor]:
    out = state_dict_to_hf(state, cfg.text)
    extra = int(cfg.extra.get("additional_vocab_size", 0))
    if extra:
        V = cfg.text.vocab_size - extra
        for base, more in (("model.embed_tokens.weight", "model.embed_tokens.additional_embedding.weight"),
                           ("lm_head.weight", "lm_head.additional_fc.weight")):
            t = out.pop(base)
            out[base], out[more] = t[:V].contiguous(), t[V:].contiguous()
    return out
