"""transformers' vision folders in and out: ViT, CLIP, SigLIP, LLaVA, BLIP-2.

These models are made of towers, so their config.json nests one config per tower (``vision_config``,
``text_config``) and their tensor names prefix each tower's. Each tower maps to a groundup Config; a LLaVA
language model goes through the decoder layouts of registry.py, so every decoder family groundup reads can
be LLaVA's LM. Tensor names are listed per model as (groundup module, HF module) prefixes, plus the few
tensors whose shape differs between the two ([CLS] as [C] or [1, 1, C], ViT's positions as [1, N, C],
SigLIP's pooling attention and BLIP-2's tower attention as one fused q/k/v matrix).

Files are written as transformers 5 writes them (CLIP-style towers without the ``vision_model.`` level inside
LLaVA) and read with either naming.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models import meta_model
from ..multimodal import CLIPConfig, FlamingoConfig, LlavaConfig
from . import flamingo
from .convert import config_from_hf, config_to_hf, state_dict_from_hf, state_dict_to_hf
from .io import CheckpointError, load_into, load_tensors, write_tensors
from .layout import UnsupportedConfig, require

MODEL_TYPES = ("vit", "clip", "siglip", "llava", "blip-2", "idefics")
_ACT_IN = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
           "relu": "relu", "silu": "silu"}
_ACT_OUT = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
            "silu": "silu"}


def _act(name: str, field: str) -> str:
    require(name in _ACT_IN, f"{field}={name!r} is not supported; supported: {', '.join(_ACT_IN)}")
    return _ACT_IN[name]


def _act_out(name: str) -> str:
    require(name in _ACT_OUT, f"activation {name!r} has no transformers name here")
    return _ACT_OUT[name]


# configs ------------------------------------------------------------------------------------------
def _sizes(hf: dict[str, Any]) -> dict[str, Any]:
    return dict(d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                d_ff=hf["intermediate_size"], ffn=_act(hf.get("hidden_act", "gelu"), "hidden_act"))


def vit_config(hf: dict[str, Any]) -> Config:
    """ViTModel / ViTForImageClassification: a pre-norm encoder, every token normed at the end."""
    archs = hf.get("architectures") or ["ViTModel"]
    labels = len(hf.get("id2label") or {}) if archs[0] == "ViTForImageClassification" else 0
    require(hf.get("pooler_act", "tanh") == "tanh", "pooler_act must be tanh")
    return Config(arch="vision", **_sizes(hf), norm_eps=hf.get("layer_norm_eps", 1e-12),
                  image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 16),
                  num_channels=hf.get("num_channels", 3), attn_bias=hf.get("qkv_bias", True),
                  pooler=archs[0] == "ViTModel", num_labels=labels, family="vit",
                  extra={k: hf[k] for k in ("id2label", "label2id") if k in hf and labels})


def tower_config(hf: dict[str, Any], family: str) -> Config:
    """A CLIP- or SigLIP-style vision tower (clip_vision_model, siglip_vision_model)."""
    kind = hf.get("model_type", family)
    require(kind in ("clip_vision_model", "siglip_vision_model"),
            f"vision_config.model_type={kind!r}: the vision tower must be clip_vision_model or siglip_vision_model")
    clip = kind == "clip_vision_model"
    pool = "cls" if clip else ("map" if hf.get("vision_use_head", True) else "none")
    return Config(arch="vision", **_sizes(hf), norm_eps=hf.get("layer_norm_eps", 1e-5 if clip else 1e-6),
                  image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 32 if clip else 16),
                  num_channels=hf.get("num_channels", 3), cls_token=clip, patch_bias=not clip, embed_norm=clip,
                  final_norm=not clip, pool_norm=clip, vision_pool=pool, family=kind,
                  extra={"projection_dim": hf["projection_dim"]} if "projection_dim" in hf else {})


def tower_to_hf(cfg: Config) -> dict[str, Any]:
    clip = cfg.family == "clip_vision_model"
    out = dict(model_type="clip_vision_model" if clip else "siglip_vision_model", hidden_size=cfg.d_model,
               intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               num_channels=cfg.image.num_channels, image_size=cfg.image.image_size, patch_size=cfg.image.patch_size,
               hidden_act=_act_out(cfg.ffn), layer_norm_eps=cfg.norm_eps, **cfg.extra)
    if clip:
        want = dict(cls_token=True, patch_bias=False, embed_norm=True, final_norm=False, pool_norm=True)
    else:
        out["vision_use_head"] = cfg.image.vision_pool == "map"
        want = dict(cls_token=False, patch_bias=True, embed_norm=False, final_norm=True, pool_norm=False)
    bad = [f"{k}={cfg.value(k)!r}" for k, v in want.items() if cfg.value(k) != v]
    require(not bad, f"a {out['model_type']} tower has {want}; this config has {', '.join(bad)}")
    return out


def _text_config(hf: dict[str, Any], kind: str) -> tuple[Config, str]:
    clip = kind == "clip"
    # an id past the vocabulary (CLIPTextConfig's defaults at a small vocabulary) is kept, with Config's warning:
    # pooling at it finds no position and takes the first, as transformers' does
    ids = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if isinstance(hf.get(k), int)}
    cfg = Config(arch="causal_lm" if clip else "encoder", **_sizes(hf), vocab_size=hf["vocab_size"],
                 max_seq_len=hf.get("max_position_embeddings", 77 if clip else 64),
                 norm_eps=hf.get("layer_norm_eps", 1e-5 if clip else 1e-6), tie_embeddings=False, family=f"{kind}_text",
                 **ids)
    pool = ("argmax" if hf.get("eos_token_id") == 2 else "eos") if clip else "last"
    return cfg, pool


def clip_config(hf: dict[str, Any]) -> CLIPConfig:
    """CLIPModel or SiglipModel from its config.json."""
    kind = hf["model_type"]
    text, pool = _text_config(hf.get("text_config") or {}, kind)
    vision = tower_config(hf.get("vision_config") or {}, f"{kind}_vision_model")
    if kind == "clip":
        return CLIPConfig(vision=vision, text=text, projection_dim=hf.get("projection_dim", 512), text_pool=pool,
                          logit_scale_init=hf.get("logit_scale_init_value", 2.6592), family="clip")
    head = (hf.get("text_config") or {}).get("projection_size", text.d_model)
    return CLIPConfig(vision=vision, text=text, projection_dim=head, projection=False, text_head=True,
                      text_pool="last", loss="sigmoid", logit_scale_init=0.0, family="siglip")


def clip_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    kind = cfg.family
    require(kind in ("clip", "siglip"), f"family={kind!r} has no transformers dual-encoder layout (clip, siglip)")
    t = cfg.text
    text = dict(model_type=f"{kind}_text_model", vocab_size=t.vocab_size, hidden_size=t.d_model,
                intermediate_size=t.d_ff, num_hidden_layers=t.n_layers, num_attention_heads=t.n_heads,
                max_position_embeddings=t.max_seq_len, hidden_act=_act_out(t.ffn), layer_norm_eps=t.norm_eps,
                **{k: getattr(t, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                   if getattr(t, k) is not None})
    if kind == "clip":
        require(cfg.projection and not cfg.text_head and cfg.loss == "softmax" and t.causal,
                "CLIP has projections, no text head, the softmax loss and a causal text tower")
        require(cfg.text_pool == ("argmax" if t.eos_token_id == 2 else "eos"),
                f"transformers' CLIP pools at {'the largest id' if t.eos_token_id == 2 else 'eos'} for eos_token_id="
                f"{t.eos_token_id}, not text_pool={cfg.text_pool!r}")
        top = dict(projection_dim=cfg.projection_dim, logit_scale_init_value=cfg.logit_scale_init)
    else:
        require(not cfg.projection and cfg.text_head and cfg.loss == "sigmoid" and not t.causal
                and cfg.text_pool == "last", "SigLIP has a text head, no projections, the sigmoid loss and a "
                "bidirectional text tower pooled at the last token")
        text["projection_size"] = cfg.projection_dim
        top = {}
    arch = "CLIPModel" if kind == "clip" else "SiglipModel"
    return dict(architectures=[arch], model_type=kind, text_config=text, vision_config=tower_to_hf(cfg.vision), **top)


def llava_config(hf: dict[str, Any], source: str) -> LlavaConfig:
    text_hf = dict(hf.get("text_config") or {})
    require("model_type" in text_hf, "text_config.model_type is missing (the language model's family)")
    text_hf.setdefault("tie_word_embeddings", hf.get("tie_word_embeddings", False))
    text = config_from_hf(text_hf, f"{source}: text_config")
    vision = tower_config(hf.get("vision_config") or {}, "clip_vision_model")
    layer = hf.get("vision_feature_layer", -2)
    require(isinstance(layer, int), f"vision_feature_layer={layer!r}: features concatenated from several layers are "
            "not supported")
    return LlavaConfig(vision=vision, text=text, image_token_id=hf.get("image_token_index", 32000),
                       connector="mlp",
                       projector_act=_act(hf.get("projector_hidden_act", "gelu"), "projector_hidden_act"),
                       projector_bias=hf.get("multimodal_projector_bias", True), vision_feature_layer=layer,
                       vision_feature_select=hf.get("vision_feature_select_strategy", "default"))


def llava_to_hf(cfg: LlavaConfig, dtype: torch.dtype) -> dict[str, Any]:
    require(cfg.connector == "mlp", "transformers' LLaVA projector is Linear-act-Linear: connector must be 'mlp'")
    text = config_to_hf(cfg.text, dtype)
    return dict(architectures=["LlavaForConditionalGeneration"], model_type="llava", text_config=text,
                vision_config=tower_to_hf(cfg.vision), image_token_index=cfg.image_token_id,
                projector_hidden_act=_act_out(cfg.projector_act), multimodal_projector_bias=cfg.projector_bias,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select, image_seq_length=cfg.image_tokens,
                tie_word_embeddings=cfg.text.tie_embeddings)


def blip2_config(hf: dict[str, Any], source: str) -> LlavaConfig:
    """Blip2ForConditionalGeneration with a decoder-only LM (OPT, as the released blip2-opt checkpoints)."""
    require(hf.get("use_decoder_only_language_model", True), "a BLIP-2 with an encoder-decoder LM (Flan-T5) is not "
            "supported: groundup's VLMs feed a decoder-only language model")
    v, q = hf.get("vision_config") or {}, hf.get("qformer_config") or {}
    vision = Config(arch="vision", **_sizes(v), norm_eps=v.get("layer_norm_eps", 1e-6),
                    image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 14),
                    num_channels=v.get("num_channels", 3), final_norm=True,
                    attn_bias=v.get("qkv_bias", True), family="blip_2_vision_model")
    qformer = Config(arch="encoder", **_sizes(q), norm_placement="post", norm_eps=q.get("layer_norm_eps", 1e-12),
                     pos="none", cross_attention_dim=q.get("encoder_hidden_size", vision.d_model),
                     dropout=q.get("hidden_dropout_prob", 0.0), attn_dropout=q.get("attention_probs_dropout_prob", 0.0),
                     family="blip_2_qformer")
    text_hf = dict(hf.get("text_config") or {})
    require("model_type" in text_hf, "text_config.model_type is missing (the language model's family)")
    text = config_from_hf(text_hf, f"{source}: text_config")
    return LlavaConfig(vision=vision, text=text, image_token_id=hf.get("image_token_index", text.vocab_size - 1),
                       connector="qformer", qformer=qformer, num_query_tokens=hf.get("num_query_tokens", 32),
                       qformer_cross_every=q.get("cross_attention_frequency", 2), vision_feature_layer=-1,
                       feature_norm=True, vision_feature_select="full", family="blip-2")


def blip2_to_hf(cfg: LlavaConfig, dtype: torch.dtype) -> dict[str, Any]:
    v, q = cfg.vision, cfg.qformer
    require(cfg.feature_norm and cfg.feature_layers == v.n_layers and v.final_norm and v.image.cls_token
            and v.image.patch_bias and not v.embed_norm,
            "BLIP-2 reads the tower's normed last layer ([CLS] and patch bias included)")
    require(cfg.qformer_cross_every > 0 and q.pos == "none", "BLIP-2's Q-Former has no positions")
    vision = dict(model_type="blip_2_vision_model", **_sizes_out(v), layer_norm_eps=v.norm_eps,
                  image_size=v.image.image_size, patch_size=v.image.patch_size, num_channels=v.image.num_channels,
                  qkv_bias=v.attn_bias)
    qformer = dict(model_type="blip_2_qformer", **_sizes_out(q), layer_norm_eps=q.norm_eps,
                   cross_attention_frequency=cfg.qformer_cross_every, encoder_hidden_size=v.d_model,
                   hidden_dropout_prob=q.dropout, attention_probs_dropout_prob=q.attn_dropout)
    return dict(architectures=["Blip2ForConditionalGeneration"], model_type="blip-2", vision_config=vision,
                qformer_config=qformer, text_config=config_to_hf(cfg.text, dtype),
                num_query_tokens=cfg.num_query_tokens,
                image_token_index=cfg.image_token_id, use_decoder_only_language_model=True,
                tie_word_embeddings=cfg.text.tie_embeddings)


def config_of(hf: dict[str, Any], source: str) -> Config | CLIPConfig | LlavaConfig | FlamingoConfig:
    """The groundup config of a vision folder's config.json (CheckpointError naming the field otherwise)."""
    kind = hf.get("model_type")
    try:
        if kind == "vit":
            return vit_config(hf)
        if kind in ("clip", "siglip"):
            return clip_config(hf)
        if kind == "blip-2":
            return blip2_config(hf, source)
        if kind == "idefics":
            return flamingo.config(hf, source)
        return llava_config(hf, source)
    except UnsupportedConfig as err:
        raise CheckpointError(f"{source} ({kind}): {err}") from None
    except KeyError as err:
        raise CheckpointError(f"{source} ({kind}): required field {err.args[0]!r} is missing") from None
    except ValueError as err:
        raise CheckpointError(f"{source} ({kind}): {err}") from None


# tensor names -------------------------------------------------------------------------------------
def _block_pairs(gu: str, hf: str, n: int, names: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"{gu}blocks.{i}.{g}", f"{hf}{h.format(i=i)}") for i in range(n) for g, h in names.items()]


_CLIP_BLOCK = {"attn.q_proj": "encoder.layers.{i}.self_attn.q_proj",
               "attn.k_proj": "encoder.layers.{i}.self_attn.k_proj",
               "attn.v_proj": "encoder.layers.{i}.self_attn.v_proj",
               "attn.o_proj": "encoder.layers.{i}.self_attn.out_proj",
               "attn_norm": "encoder.layers.{i}.layer_norm1", "mlp_norm": "encoder.layers.{i}.layer_norm2",
               "mlp.up_proj": "encoder.layers.{i}.mlp.fc1", "mlp.down_proj": "encoder.layers.{i}.mlp.fc2"}
_VIT_BLOCK = {"attn.q_proj": "encoder.layer.{i}.attention.attention.query",
              "attn.k_proj": "encoder.layer.{i}.attention.attention.key",
              "attn.v_proj": "encoder.layer.{i}.attention.attention.value",
              "attn.o_proj": "encoder.layer.{i}.attention.output.dense",
              "attn_norm": "encoder.layer.{i}.layernorm_before", "mlp_norm": "encoder.layer.{i}.layernorm_after",
              "mlp.up_proj": "encoder.layer.{i}.intermediate.dense", "mlp.down_proj": "encoder.layer.{i}.output.dense"}


class Names:
    """groundup <-> HF tensor names of one model: module prefixes, plus whole tensors with their HF shape."""

    def __init__(self) -> None:
        self.modules: list[tuple[str, str]] = []
        self.tensors: dict[str, tuple[str, tuple[int, ...] | None]] = {}  # gu name -> (hf name, hf shape or None)
        # gu prefix of q/k/v -> the HF name of their stacked tensor, {leaf} = weight | bias (SigLIP's pooling
        # attention, BLIP-2's tower)
        self.fused: dict[str, str] = {}

    def tower(self, cfg: Config, gu: str, hf: str) -> None:
        """A CLIP/SigLIP vision tower under the prefixes."""
        C = cfg.d_model
        self.modules += [(f"{gu}patch_embed", f"{hf}embeddings.patch_embedding"),
                         (f"{gu}pos_embed", f"{hf}embeddings.position_embedding")]
        if cfg.image.cls_token:
            self.tensors[f"{gu}cls_token"] = (f"{hf}embeddings.class_embedding", (C,))
        if cfg.embed_norm:
            self.modules.append((f"{gu}embed_norm", f"{hf}pre_layrnorm"))
        self.modules += _block_pairs(gu, hf, cfg.n_layers, _CLIP_BLOCK)
        self.modules.append((f"{gu}pool_norm" if cfg.image.pool_norm else f"{gu}norm", f"{hf}post_layernorm"))
        if cfg.image.vision_pool == "map":
            self.tensors[f"{gu}head.probe"] = (f"{hf}head.probe", None)
            self.fused[f"{gu}head.attn"] = f"{hf}head.attention.in_proj_{{leaf}}"
            self.modules += [(f"{gu}head.attn.o_proj", f"{hf}head.attention.out_proj"),
                             (f"{gu}head.norm", f"{hf}head.layernorm"), (f"{gu}head.mlp.up_proj", f"{hf}head.mlp.fc1"),
                             (f"{gu}head.mlp.down_proj", f"{hf}head.mlp.fc2")]

    def blip_tower(self, cfg: Config, gu: str, hf: str) -> None:
        """BLIP-2's vision tower: fused q/k/v, positions stored [1, N, C], every token normed at the end."""
        self.modules += [(f"{gu}patch_embed", f"{hf}embeddings.patch_embedding"), (f"{gu}norm", f"{hf}post_layernorm")]
        self.tensors[f"{gu}cls_token"] = (f"{hf}embeddings.class_embedding", None)
        shape = (1, cfg.max_seq_len, cfg.d_model)
        self.tensors[f"{gu}pos_embed.weight"] = (f"{hf}embeddings.position_embedding", shape)
        for i in range(cfg.n_layers):
            p, h = f"{gu}blocks.{i}.", f"{hf}encoder.layers.{i}."
            self.fused[f"{p}attn"] = f"{h}self_attn.qkv.{{leaf}}"
            self.modules += [(f"{p}attn.o_proj", f"{h}self_attn.projection"), (f"{p}attn_norm", f"{h}layer_norm1"),
                             (f"{p}mlp_norm", f"{h}layer_norm2"), (f"{p}mlp.up_proj", f"{h}mlp.fc1"),
                             (f"{p}mlp.down_proj", f"{h}mlp.fc2")]

    def qformer(self, cfg: LlavaConfig, gu: str, hf: str) -> None:
        """BLIP-2's Q-Former (BERT names) and its queries."""
        self.tensors[f"{gu}queries"] = ("query_tokens", None)
        self.modules.append((f"{gu}embed_norm", f"{hf}layernorm"))
        for i in range(cfg.qformer.n_layers):
            p, h = f"{gu}blocks.{i}.", f"{hf}encoder.layer.{i}."
            parts = [("attn", "attention", "attn_norm")]
            if i % cfg.qformer_cross_every == 0:
                parts.append(("cross_attn", "crossattention", "cross_attn_norm"))
            for ours, theirs, norm in parts:
                self.modules += [(f"{p}{ours}.{x}_proj", f"{h}{theirs}.attention.{y}")
                                 for x, y in (("q", "query"), ("k", "key"), ("v", "value"))]
                self.modules += [(f"{p}{ours}.o_proj", f"{h}{theirs}.output.dense"),
                                 (f"{p}{norm}", f"{h}{theirs}.output.LayerNorm")]
            self.modules += [(f"{p}mlp.up_proj", f"{h}intermediate_query.dense"),
                             (f"{p}mlp.down_proj", f"{h}output_query.dense"),
                             (f"{p}mlp_norm", f"{h}output_query.LayerNorm")]

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out, state = {}, dict(state)
        for gu, hf in self.fused.items():
            for leaf in ("weight", "bias"):
                parts = [state.pop(f"{gu}.{p}_proj.{leaf}") for p in "qkv"]
                out[hf.format(leaf=leaf)] = torch.cat(parts)
        for gu, (hf, shape) in self.tensors.items():
            t = state.pop(gu)
            out[hf] = t.reshape(shape) if shape is not None else t
        prefixes = sorted(self.modules, key=lambda p: -len(p[0]))
        for name, t in state.items():
            module, _, leaf = name.rpartition(".")
            hf = next((h for g, h in prefixes if g == module), None)
            if hf is None:
                raise CheckpointError(f"tensor {name} has no name in this layout")
            out[f"{hf}.{leaf}"] = t
        return out

    def from_hf(self, tensors: dict[str, torch.Tensor], model: torch.nn.Module, source: str
                ) -> dict[str, torch.Tensor]:
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        tensors, out = dict(tensors), {}
        for gu, hf in self.fused.items():
            for leaf in ("weight", "bias"):
                name = hf.format(leaf=leaf)
                if name not in tensors:
                    raise CheckpointError(f"{source}: tensor {name} is missing")
                for p, part in zip("qkv", tensors.pop(name).chunk(3), strict=True):
                    out[f"{gu}.{p}_proj.{leaf}"] = part
        for gu, (hf, _) in self.tensors.items():
            if hf not in tensors:
                raise CheckpointError(f"{source}: tensor {hf} is missing")
            out[gu] = tensors.pop(hf).reshape(shapes[gu])
        by_hf = {h: g for g, h in self.modules}
        unexpected = []
        for name, t in tensors.items():
            module, _, leaf = name.rpartition(".")
            if module not in by_hf:
                if not name.endswith("position_ids"):  # a buffer older files carry
                    unexpected.append(name)
                continue
            out[f"{by_hf[module]}.{leaf}"] = t
        if unexpected:
            raise CheckpointError(f"{source}: {len(unexpected)} tensor(s) this model does not use: "
                                  f"{', '.join(sorted(unexpected)[:20])}")
        return out


def names_of(model: torch.nn.Module, hf_names: set[str] | None = None) -> Names:
    """The name map of a groundup vision model (``hf_names``: the file's, to read LLaVA towers either way)."""
    cfg, n = model.config, Names()
    if isinstance(cfg, Config):  # ViT
        p = "vit." if cfg.heads.num_labels else ""
        n.modules += [("patch_embed", f"{p}embeddings.patch_embeddings.projection"), ("norm", f"{p}layernorm")]
        n.tensors["cls_token"] = (f"{p}embeddings.cls_token", None)
        n.tensors["pos_embed.weight"] = (f"{p}embeddings.position_embeddings", (1, cfg.max_seq_len, cfg.d_model))
        n.modules += _block_pairs("", p, cfg.n_layers, _VIT_BLOCK)
        if cfg.heads.pooler:
            n.modules.append(("pooler.dense", f"{p}pooler.dense"))
        if cfg.heads.num_labels:
            n.modules.append(("classifier", "classifier"))
        return n
    if isinstance(cfg, CLIPConfig):
        n.tower(cfg.vision, "vision.", "vision_model.")
        t = cfg.text
        n.modules += [("text.embed", "text_model.embeddings.token_embedding"),
                      ("text.pos_embed", "text_model.embeddings.position_embedding"),
                      ("text.norm", "text_model.final_layer_norm")]
        n.modules += _block_pairs("text.", "text_model.", t.n_layers, _CLIP_BLOCK)
        if cfg.text_head:
            n.modules.append(("text.head", "text_model.head"))
        if cfg.projection:
            n.modules += [("visual_projection", "visual_projection"), ("text_projection", "text_projection")]
        shape = () if cfg.family == "clip" else (1,)
        n.tensors["logit_scale"] = ("logit_scale", shape)
        if cfg.loss == "sigmoid":
            n.tensors["logit_bias"] = ("logit_bias", shape)
        return n
    if isinstance(cfg, FlamingoConfig):
        flamingo.names(cfg, n)
        return n
    if cfg.connector == "qformer":  # BLIP-2
        n.blip_tower(cfg.vision, "vision_tower.", "vision_model.")
        n.qformer(cfg, "projector.qformer.", "qformer.")
        n.modules.append(("projector.linear_1", "language_projection"))
        return n
    # LLaVA: the tower, the projector; the language model's names come from its decoder layout
    inner = hf_names is not None and any(k.startswith("vision_tower.vision_model.") for k in hf_names)
    n.tower(cfg.vision, "vision_tower.", "vision_tower.vision_model." if inner else "vision_tower.")
    n.modules += [("projector.linear_1", "multi_modal_projector.linear_1"),
                  ("projector.linear_2", "multi_modal_projector.linear_2")]
    return n


# folders ------------------------------------------------------------------------------------------
def load(folder: Path, hf: dict[str, Any], dtype: torch.dtype | None) -> torch.nn.Module:
    """A vision folder (config.json already read as ``hf``) -> VisionEncoder, CLIP or Llava, in eval mode."""
    source = str(folder / "config.json")
    cfg = config_of(hf, source)
    tensors = load_tensors(folder, dtype)
    model = meta_model(cfg)
    if isinstance(cfg, FlamingoConfig):
        rest = dict(tensors)
        lm = flamingo.lm_from_hf(rest, cfg)
        state = {**names_of(model).from_hf(rest, model, str(folder)), **lm}
    elif isinstance(cfg, LlavaConfig):
        lm = {k.removeprefix("language_model."): v for k, v in tensors.items() if k.startswith("language_model.")}
        rest = {k: v for k, v in tensors.items() if not k.startswith("language_model.")}
        state = names_of(model, set(rest)).from_hf(rest, model, str(folder))
        state.update({f"language_model.{k}": v for k, v in state_dict_from_hf(lm, cfg.text).items()})
    else:
        state = names_of(model).from_hf(tensors, model, str(folder))
    return load_into(model, state, str(folder)).eval()


def write(model: torch.nn.Module, folder: Path, *, max_shard_bytes: int) -> None:
    """config.json + safetensors of a vision model into an existing folder (hf.save_pretrained makes it atomic)."""
    cfg = model.config
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    try:
        if isinstance(cfg, Config):
            require(cfg.family == "vit", f"a vision encoder saves as family='vit', not {cfg.family!r} (its towers "
                    "save inside a CLIP or LLaVA folder)")
            body = dict(architectures=["ViTForImageClassification" if cfg.heads.num_labels else "ViTModel"],
                        model_type="vit", **_sizes_out(cfg), layer_norm_eps=cfg.norm_eps,
                        image_size=cfg.image.image_size, patch_size=cfg.image.patch_size,
                        num_channels=cfg.image.num_channels, qkv_bias=cfg.attn_bias,
                        pooler_act="tanh", pooler_output_size=cfg.d_model, **cfg.extra)
            want = dict(cls_token=True, final_norm=True, embed_norm=False, pool_norm=False, patch_bias=True)
            bad = [f"{k}={cfg.value(k)!r}" for k, v in want.items() if cfg.value(k) != v]
            require(not bad, f"transformers' ViT has {want}; this config has {', '.join(bad)}")
            require(bool(cfg.heads.num_labels) != cfg.heads.pooler, "a ViT folder is ViTModel (pooler, no classifier) "
                    "or ViTForImageClassification (a classifier, no pooler)")
            tensors = names_of(model).to_hf(state)
        elif isinstance(cfg, CLIPConfig):
            body = clip_to_hf(cfg)
            tensors = names_of(model).to_hf(state)
        elif isinstance(cfg, FlamingoConfig):
            body = flamingo.config_to_hf(cfg, dtype)
            lm = {k.removeprefix("language_model."): v for k, v in state.items() if k.startswith("language_model.")
                  and k not in model.tied_keys()}
            tensors = names_of(model).to_hf({k: v for k, v in state.items() if not k.startswith("language_model.")})
            tensors.update(flamingo.lm_to_hf(lm, cfg))
        else:
            body = blip2_to_hf(cfg, dtype) if cfg.connector == "qformer" else llava_to_hf(cfg, dtype)
            lm = {k.removeprefix("language_model."): v for k, v in state.items() if k.startswith("language_model.")
                  and k not in model.tied_keys()}
            rest = {k: v for k, v in state.items() if not k.startswith("language_model.")}
            tensors = names_of(model).to_hf(rest)
            tensors.update({f"language_model.{k}": v for k, v in state_dict_to_hf(lm, cfg.text).items()})
    except UnsupportedConfig as err:
        raise CheckpointError(f"cannot write this model in transformers' layout: {err}") from None
    body["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    write_tensors(folder, tensors, max_shard_bytes=max_shard_bytes)


def _sizes_out(cfg: Config) -> dict[str, Any]:
    return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                intermediate_size=cfg.d_ff, hidden_act=_act_out(cfg.ffn))
