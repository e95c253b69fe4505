"""Configs of the models made of several towers: a dual encoder (CLIP, SigLIP) and a vision-language model
(LLaVA). Each tower is a plain Config (``arch="vision"`` for the image encoder, a text Config for the rest);
what joins them is data here, so CLIP and SigLIP are one model class with different fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_type_hints

from .config import Config
from .presets import PRESETS

ContrastiveLoss = Literal["softmax", "sigmoid"]  # CLIP's symmetric InfoNCE; SigLIP's pairwise sigmoid
# where the text tower pools: the first eos_token_id (CLIP since transformers#24773), the largest id (the
# original CLIP vocabulary, whose end-of-text token is its last id), or the last position (SigLIP)
TextPool = Literal["eos", "argmax", "last"]
# LLaVA-1.5's Linear-GELU-Linear, LLaVA-1's one matrix, or BLIP-2's Q-Former (learned queries that cross-attend to
# the image features) followed by one matrix
Connector = Literal["mlp", "linear", "qformer"]
FeatureSelect = Literal["default", "full"]  # drop the [CLS] feature (LLaVA's default) or keep every token


def _check_literals(obj: Any) -> None:
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = get_args(hints[f.name])
        if allowed and all(isinstance(a, str) for a in allowed) and getattr(obj, f.name) not in allowed:
            raise ValueError(f"{f.name}={getattr(obj, f.name)!r} is not one of {', '.join(map(repr, allowed))}")


class _Towers:
    """What the composite configs share: validation helpers, replace, dict round trips."""

    def _check_towers(self, text_archs: tuple[str, ...]) -> None:
        _check_literals(self)
        if self.vision.arch != "vision":
            raise ValueError(f"vision: the image tower needs arch='vision', got {self.vision.arch!r}")
        if self.text.arch not in text_archs:
            raise ValueError(f"text: the text model must be arch {' or '.join(map(repr, text_archs))}, got "
                             f"{self.text.arch!r}")

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), Config):
                out[f.name] = getattr(self, f.name).to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        towers = {k: Config.from_dict(v) for k, v in data.items()
                  if isinstance(v, dict) and k in ("text", "vision", "qformer", "resampler")}
        return cls(**{**data, **towers})

    @property
    def arch(self) -> str:
        return self.ARCH


@dataclass
class CLIPConfig(_Towers):
    """A dual encoder: an image tower and a text tower mapped into one space (Radford et al., 2021).

    CLIP: projections without bias from each tower's pooled output to ``projection_dim``, a learnable
    temperature initialised to ln(1/0.07), the softmax (InfoNCE) loss. SigLIP (Zhai et al., 2023): no
    projections but a linear head on the text tower, attention pooling in the image tower, the sigmoid loss
    with a learnable bias.
    """

    ARCH = "dual_encoder"
    vision: Config
    text: Config
    projection_dim: int = 512
    projection: bool = True  # CLIP's visual_projection / text_projection (no bias)
    text_head: bool = False  # SigLIP's Linear(d_text, projection_dim) with bias on the pooled text
    text_pool: TextPool = "eos"
    loss: ContrastiveLoss = "softmax"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float = -10.0  # SigLIP's b, with loss="sigmoid"
    family: str = "clip"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_towers(("causal_lm", "encoder"))  # a causal (CLIP) or bidirectional (SigLIP) text tower
        if self.vision.image.vision_pool == "none":
            raise ValueError("vision.vision_pool='none': a dual encoder needs one vector per image ('cls' or 'map')")
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim={self.projection_dim} must be positive")
        if not self.projection and not self.text_head and self.vision.d_model != self.text.d_model:
            raise ValueError(f"without projections the towers must share a width: vision.d_model="
                             f"{self.vision.d_model}, text.d_model={self.text.d_model}")
        if self.text_pool == "eos" and not self.text.eos_ids:
            raise ValueError("text_pool='eos' pools at the end-of-text token: set text.eos_token_id")


@dataclass
class LlavaConfig(_Towers):
    """LLaVA (Liu et al., 2023): image features from an inner layer of a vision tower, projected into the
    embedding space of a causal language model and put where the ``<image>`` placeholder tokens are.

    BLIP-2 (Li et al., 2023) is the same model with ``connector="qformer"``: ``num_query_tokens`` learned queries
    run through the ``qformer`` stack (post-norm, BERT-style), cross-attending to the tower's normed output
    (``feature_norm``) in every ``qformer_cross_every``-th layer; their outputs, projected, are the visual tokens.
    """

    ARCH = "vlm"
    vision: Config
    text: Config
    image_token_id: int = 32000
    connector: Connector = "mlp"
    projector_act: str = "gelu"
    projector_bias: bool = True
    vision_feature_layer: int = -2  # hidden_states[-2]: the output of the second-to-last block
    vision_feature_select: FeatureSelect = "default"
    feature_norm: bool = False  # the tower's final norm on the features (BLIP-2 reads its last_hidden_state)
    qformer: Config | None = None
    num_query_tokens: int = 32
    qformer_cross_every: int = 2
    family: str = "llava"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_towers(("causal_lm",))
        n = self.vision.n_layers
        if not -n <= self.vision_feature_layer <= n or self.vision_feature_layer == -n - 1:
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer} must index the tower's hidden states "
                             f"(0 = the embeddings, 1..{n} the blocks, negative from the end)")
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise ValueError(f"image_token_id={self.image_token_id} must be a token of the language model "
                             f"(vocab_size={self.text.vocab_size})")
        if self.connector == "qformer":
            q = self.qformer
            if q is None or q.arch != "encoder" or q.norm_placement != "post":
                raise ValueError("connector='qformer' needs qformer: a Config(arch='encoder', norm_placement='post') "
                                 "(BLIP-2's Q-Former is BERT-style)")
            if (q.cross_attention_dim or q.d_model) != self.vision.d_model:
                raise ValueError(f"qformer.cross_attention_dim={q.cross_attention_dim} must be the vision tower's "
                                 f"width {self.vision.d_model}")
            if self.num_query_tokens <= 0 or self.qformer_cross_every <= 0:
                raise ValueError(f"num_query_tokens={self.num_query_tokens} and qformer_cross_every="
                                 f"{self.qformer_cross_every} must be positive")
        elif self.qformer is not None:
            raise ValueError(f"qformer is set but connector={self.connector!r}: use connector='qformer'")
        if self.projector_act not in ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu"):
            raise ValueError(f"projector_act={self.projector_act!r} is not one of gelu, gelu_tanh, quick_gelu, "
                             "relu, silu")

    @property
    def image_tokens(self) -> int:
        """Tokens one image becomes in the text stream: 576 for LLaVA-1.5 (336 px, 14 px patches, [CLS] dropped)."""
        if self.connector == "qformer":
            return self.num_query_tokens
        v = self.vision
        drop = int(v.image.cls_token and self.vision_feature_select == "default")
        return v.image_tokens - drop

    @property
    def feature_layers(self) -> int:
        """Blocks of the vision tower that run to give the features (the ones after are never used)."""
        k = self.vision_feature_layer
        return k if k >= 0 else self.vision.n_layers + 1 + k


GateType = Literal["float", "vector"]  # one tanh gate per layer, or one per channel


@dataclass
class FlamingoConfig(_Towers):
    """Flamingo (Alayrac et al., 2022; its open reproduction Idefics v1): a frozen causal LM reads images through
    gated cross-attention layers inserted before every ``cross_every``-th block. Each image's tower output is
    compressed to ``resampler``'s ``n_latents`` tokens by a perceiver resampler (learned latents attending to
    concat(features, latents)); the gates are tanh(alpha) with alpha initialised to 0, so the model starts as the
    LM. Text tokens see only the latent tokens of their latest preceding image (``image_token_id`` marks them)."""

    ARCH = "flamingo"
    vision: Config
    text: Config
    resampler: Config | None = None  # None: the tower's tokens go straight to the cross-attention
    n_latents: int = 64
    cross_every: int = 4
    gate_type: GateType = "float"
    image_token_id: int | None = None
    family: str = "idefics"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_towers(("causal_lm",))
        if not 1 <= self.cross_every <= self.text.n_layers:
            raise ValueError(f"cross_every={self.cross_every} must be in [1, text.n_layers={self.text.n_layers}]")
        if self.resampler is not None and self.resampler.d_model != self.vision.d_model:
            raise ValueError(f"resampler.d_model={self.resampler.d_model} must be the tower's width "
                             f"{self.vision.d_model}")
        if self.n_latents <= 0:
            raise ValueError(f"n_latents={self.n_latents} must be positive")
        if self.image_token_id is not None and not 0 <= self.image_token_id < self.text.vocab_size:
            raise ValueError(f"image_token_id={self.image_token_id} must be a token of the language model")

    @property
    def image_tokens(self) -> int:
        """Tokens each image is to the cross-attention: the latents, or the tower's tokens without a resampler."""
        return self.n_latents if self.resampler is not None else self.vision.image_tokens

    @property
    def cross_layers(self) -> int:
        return self.text.n_layers // self.cross_every


def _clip_tower(d: int, layers: int, heads: int, image: int, patch: int) -> Config:
    return Config(arch="vision", d_model=d, n_layers=layers, n_heads=heads, d_ff=4 * d, image_size=image,
                  patch_size=patch, ffn="quick_gelu", embed_norm=True, final_norm=False, pool_norm=True,
                  patch_bias=False, family="clip_vision_model")


def _clip_text(d: int, layers: int, heads: int) -> Config:
    return Config(vocab_size=49408, d_model=d, n_layers=layers, n_heads=heads, d_ff=4 * d, max_seq_len=77,
                  ffn="quick_gelu", tie_embeddings=False, eos_token_id=2, bos_token_id=1, pad_token_id=1,
                  family="clip_text")


def preset(name: str) -> Config | CLIPConfig | LlavaConfig:
    """The published shapes of the vision models (for ``groundup calc`` and meta-device sizing): vit-base-patch16-224,
    clip-vit-base-patch32, clip-vit-large-patch14-336, siglip-base-patch16-224, llava-1.5-7b."""

    if name == "vit-base-patch16-224":
        return Config(arch="vision", d_model=768, n_layers=12, n_heads=12, d_ff=3072, norm_eps=1e-12, num_labels=1000,
                      name=name, family="vit")
    if name == "clip-vit-base-patch32":
        return CLIPConfig(vision=_clip_tower(768, 12, 12, 224, 32), text=_clip_text(512, 12, 8), projection_dim=512,
                          text_pool="argmax")
    if name == "clip-vit-large-patch14-336":
        return CLIPConfig(vision=_clip_tower(1024, 24, 16, 336, 14), text=_clip_text(768, 12, 12), projection_dim=768,
                          text_pool="argmax")
    if name == "siglip-base-patch16-224":
        vision = Config(arch="vision", d_model=768, n_layers=12, n_heads=12, d_ff=3072, ffn="gelu_tanh", norm_eps=1e-6,
                        cls_token=False, vision_pool="map", family="siglip_vision_model")
        text = Config(arch="encoder", vocab_size=32000, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                      max_seq_len=64, ffn="gelu_tanh", norm_eps=1e-6, tie_embeddings=False, family="siglip_text")
        return CLIPConfig(vision=vision, text=text, projection_dim=768, projection=False, text_head=True,
                          text_pool="last", loss="sigmoid", logit_scale_init=0.0, family="siglip")
    if name == "llava-1.5-7b":  # Vicuna-7B (Llama-2 shapes, 32064 ids) on CLIP ViT-L/14 at 336 px
        text = Config(**{**PRESETS["llama-2-7b"], "vocab_size": 32064, "max_seq_len": 4096, "family": "llama"},
                      name="vicuna-7b")
        return LlavaConfig(vision=_clip_tower(1024, 24, 16, 336, 14), text=text, image_token_id=32000)
    raise ValueError(f"unknown vision preset {name!r}; choose one of: {', '.join(PRESETS_MM)}")


PRESETS_MM = ("vit-base-patch16-224", "clip-vit-base-patch32", "clip-vit-large-patch14-336", "siglip-base-patch16-224",
              "llava-1.5-7b")
