"""Vision-language models: an image tower feeding a causal language model (LLaVA; BLIP-2 with its Q-Former).

LLaVA (Liu et al., 2023; LLaVA-1.5, 2024): the vision tower's features from an inner layer (hidden_states[-2]
by default, the [CLS] dropped) go through a projector (LLaVA-1.5: Linear-GELU-Linear; LLaVA-1: one Linear)
into the language model's embedding space, one vector per patch. The token stream holds one placeholder
token (``image_token_id``) per visual token, ``image_tokens`` of them per image (576 for LLaVA-1.5 at 336 px);
their embeddings are replaced by the projected features, in order, and the language model runs as usual.
``expand_image_tokens`` turns each single ``<image>`` token of a prompt into that run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..multimodal import LlavaConfig
from ..nn.attention import MaskSpec
from ..nn.block import Block
from ..nn.kv_cache import DecoderCache
from ..nn.linear import Linear
from ..nn.mlp import ACTIVATIONS
from ..nn.norm import make_norm
from .base import PreTrained
from .causal_lm import CausalLM
from .common import embed, init_weights
from .vision import VisionEncoder


class QFormer(nn.Module):
    """BLIP-2's querying transformer (Li et al., 2023): learned queries [Q, C_q], normed, through post-norm blocks
    whose every k-th one cross-attends to the image features: [N, P, C_v] -> [N, Q, C_q]."""

    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        q = cfg.qformer
        self.queries = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, q.d_model))
        self.embed_norm = make_norm(q)
        every = cfg.qformer_cross_every
        self.blocks = nn.ModuleList(Block(q, cross=i % every == 0) for i in range(q.n_layers))
        self.dropout = q.dropout

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.queries.expand(feats.shape[0], -1, -1))  # [N, Q, C_q]
        x = nn.functional.dropout(x, self.dropout, self.training) if self.dropout else x
        mask = MaskSpec(causal=False)
        for block in self.blocks:
            memory = feats if block.cross_attn is not None else None
            x = block(x, mask, memory=memory, memory_mask=mask if memory is not None else None)[0]
        return x


class Projector(nn.Module):
    """Vision features [.., C_v] -> language-model embeddings [.., C]: linear_2(act(linear_1(x))), linear_1 alone, or
    linear_1(QFormer(x)) (BLIP-2's language_projection after the Q-Former)."""

    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        qformer = cfg.connector == "qformer"
        cv, ct = (cfg.qformer.d_model if qformer else cfg.vision.d_model), cfg.text.d_model
        self.qformer = QFormer(cfg) if qformer else None
        self.linear_1 = Linear(cv, ct, bias=cfg.projector_bias)
        self.act = ACTIVATIONS[cfg.projector_act] if cfg.connector == "mlp" else None
        self.linear_2 = Linear(ct, ct, bias=cfg.projector_bias) if cfg.connector == "mlp" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qformer is not None:
            x = self.qformer(x)
        x = self.linear_1(x)
        return x if self.linear_2 is None else self.linear_2(self.act(x))


class WithLanguageModel:
    """What a model built around a ``language_model`` (CausalLM) takes from it: the tied head and the embedding."""

    language_model: CausalLM

    def tie_weights(self) -> None:
        self.language_model.tie_weights()

    def tied_keys(self) -> dict[str, str]:
        return {f"language_model.{a}": f"language_model.{s}" for a, s in self.language_model.tied_keys().items()}

    @property
    def embed(self) -> nn.Embedding:
        return self.language_model.embed


class Llava(WithLanguageModel, PreTrained, nn.Module):
    """forward(input_ids, pixel_values=None, attention_mask=None, ...) -> logits [B, T, V] (or the loss with
    ``targets``), the language model's outputs with the images in its input."""

    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_tower = VisionEncoder(cfg.vision)
        self.projector = Projector(cfg)
        self.language_model = CausalLM(cfg.text)
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.projector.apply(lambda m: init_weights(m, cfg.text.impl.init_std))
            if self.projector.qformer is not None:
                nn.init.normal_(self.projector.qformer.queries, std=cfg.text.impl.init_std)

    def set_attn_kernel(self, kernel: str) -> Llava:
        self.vision_tower.set_attn_kernel(kernel)
        self.language_model.set_attn_kernel(kernel)
        return self

    # ---------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> projected visual tokens [N, image_tokens, C] (transformers'
        get_image_features)."""
        feats = self.vision_tower.features(pixel_values, self.config.feature_layers)  # [N, 1 + P, C_v]
        if self.config.feature_norm:
            feats = self.vision_tower.norm(feats)
        if self.config.connector != "qformer" and self.config.vision_feature_select == "default" \
                and self.config.vision.image.cls_token:
            feats = feats[:, 1:]  # the patches only: [N, P, C_v]
        return self.projector(feats)

    def check_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> None:
        """The placeholder count must be image_tokens per image given, checked before any compute."""
        n_tok = int((input_ids == self.config.image_token_id).sum())
        n_img = 0 if pixel_values is None else pixel_values.shape[0]
        per = self.config.image_tokens
        if n_tok != n_img * per:
            raise ValueError(f"input_ids hold {n_tok} image placeholder tokens (id {self.config.image_token_id}) for "
                             f"{n_img} image(s); each image fills {per}: expand each <image> with "
                             "expand_image_tokens, and give one image per <image> (in order)")

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings [B, T, C] with the visual tokens at the placeholders (row-major order: the images
        of row 0 first)."""
        self.check_images(input_ids, pixel_values)
        x = embed(self.config.text, self.language_model.embed, input_ids)  # [B, T, C]
        if pixel_values is None:
            return x
        feats = self.image_features(pixel_values).to(x.dtype)  # [N, P, C]
        where = (input_ids == self.config.image_token_id)[..., None]  # [B, T, 1]
        return x.masked_scatter(where, feats)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, reduction: str = "mean", cache: DecoderCache | None = None,
                logits_to_keep: int = 0, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] with image_tokens placeholders per image, pixel_values [N, 3, H, W] -> logits [B, T, V]
        (the language model's forward; ``targets`` gives its fused loss). ``image_sizes`` is accepted for
        transformers' signature: LLaVA-1.5 resizes every image to one size, so it carries nothing here."""
        embeds = None
        if pixel_values is not None or (cache is None or cache.length == 0):
            embeds = self.embed_inputs(input_ids, pixel_values)
        return self.language_model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   targets=targets, reduction=reduction, cache=cache, logits_to_keep=logits_to_keep,
                                   inputs_embeds=embeds)

    def expand_image_tokens(self, ids: Sequence[int]) -> list[int]:
        """A prompt's ids with each single image token repeated image_tokens times (what transformers' processor
        does to "<image>")."""
        tok, out = self.config.image_token_id, []
        for i in ids:
            out.extend([tok] * self.config.image_tokens if i == tok else [i])
        return out

    def with_images(self, pixel_values: torch.Tensor | None) -> ImagePrompt:
        """A view of the model that generation drives like a CausalLM: the prompt's forward puts the images in,
        later steps run the language model on the cache alone."""
        return ImagePrompt(self, pixel_values)


class ImagePrompt(nn.Module):
    """Llava + the images of a prompt, shaped like a CausalLM for generate/causal.py: ``config`` is the language
    model's, ``new_cache`` its cache, and the first forward (an empty cache) embeds the images."""

    def __init__(self, model: Llava, pixel_values: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.pixel_values = model, pixel_values
        self.virtual_tokens, self.prefix_length = 0, 0

    @property
    def config(self):
        return self.model.language_model.config

    @config.setter
    def config(self, value) -> None:  # generation may swap in a rope-scaled copy for one call
        self.model.language_model.config = value

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        return self.model.language_model.new_cache(capacity)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        cache = kwargs.get("cache")
        first = cache is None or cache.length == 0
        return self.model(input_ids, self.pixel_values if first else None, **kwargs)
