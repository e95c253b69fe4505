"""Flamingo (Alayrac et al., 2022) and its open reproduction Idefics v1: a frozen language model that reads images
through new layers only.

    images [B, I, 3, H, W] -> vision tower -> [B*I, S, C_v] -> perceiver resampler -> [B*I, R, C_v] -> [B, I*R, C_v]
    text ids [B, T] -> the LM's embeddings -> for block i: (a gated cross-attention layer if i % k == 0) -> block i

The perceiver resampler (Jaegle et al., 2021; Flamingo 2.1): R learned latents; each layer normalises the
features and the latents, lets the latents attend to concat(features, latents), adds an FFN; any number of
visual tokens becomes R. A gated cross-attention dense layer: x + tanh(a) xattn(norm(x), images), then
x + tanh(b) ffn(norm(x)), with a = b = 0 at initialisation, so the model is exactly the LM until training opens
the gates. Which images a text token sees is an explicit [B, T, I] mask (``image_attention_mask``, transformers'
name): Flamingo's rule is the latest image before the token (``latest_image_mask``); a token that sees none
gets no cross-attention output at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import Config
from ..multimodal import FlamingoConfig
from ..nn.attention import Attention, MaskSpec
from ..nn.cross_entropy import cross_entropy
from ..nn.kv_cache import DecoderCache
from ..nn.mlp import make_ffn
from ..nn.norm import make_norm
from .base import PreTrained
from .causal_lm import CausalLM
from .vision import VisionEncoder
from .vlm import WithLanguageModel


class PerceiverLayer(nn.Module):
    """latents + attn(norm(latents) -> concat(norm(features), norm(latents))), then latents + ffn(norm(latents))."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.context_norm, self.latents_norm = make_norm(cfg), make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = make_ffn(cfg)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        lat = self.latents_norm(latents)
        memory = torch.cat([self.context_norm(features), lat], dim=1)  # [N, S + R, C]
        latents = latents + self.attn(lat, MaskSpec(causal=False), memory=memory)[0]
        return latents + self.mlp(self.mlp_norm(latents))


class PerceiverResampler(nn.Module):
    """[N, S, C] features -> [N, R, C]: R learned latents through the layers, then a norm."""

    def __init__(self, cfg: Config, n_latents: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, cfg.d_model) * cfg.impl.init_std)
        self.layers = nn.ModuleList(PerceiverLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)  # [N, R, C]
        for layer in self.layers:
            latents = layer(features, latents)
        return self.norm(latents)


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense layer, inserted before an LM block (its norms and FFN are the LM's
    kind): x + tanh(alpha_attn) xattn(norm(x), images) on the tokens that see an image, then
    x + tanh(alpha_dense) ffn(norm(x)). Both alphas start at 0."""

    def __init__(self, text: Config, vision_dim: int, gate: str) -> None:
        super().__init__()
        shape = (1,) if gate == "float" else (1, 1, text.d_model)
        self.attn_norm = make_norm(text)
        self.cross_attn = Attention(text, kv_dim=vision_dim)
        self.mlp_norm = make_norm(text)
        self.mlp = make_ffn(text)
        self.alpha_attn = nn.Parameter(torch.zeros(shape))
        self.alpha_dense = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor, images: torch.Tensor, mask: MaskSpec, sees: torch.Tensor) -> torch.Tensor:
        """x [B, T, C]; images [B, I*R, C_v]; ``sees`` [B, T]: whether each token sees any image."""
        a, _ = self.cross_attn(self.attn_norm(x), mask, memory=images)
        x = x + torch.tanh(self.alpha_attn) * a.masked_fill(~sees[..., None], 0.0)
        return x + torch.tanh(self.alpha_dense) * self.mlp(self.mlp_norm(x))


def latest_image_mask(input_ids: torch.Tensor, image_token_id: int, n_images: int) -> torch.Tensor:
    """[B, T, n_images]: each token sees the latest image whose token is at or before it (Flamingo 2.3); tokens
    before a row's first image see none. A row's images are numbered in order of their tokens."""
    is_image = input_ids == image_token_id
    index = is_image.long().cumsum(-1) - 1  # [B, T]: the latest image so far, -1 before the first
    if int(is_image.sum(-1).max()) > n_images:
        raise ValueError(f"a row holds {int(is_image.sum(-1).max())} image tokens (id {image_token_id}) for "
                         f"{n_images} images per row")
    out = torch.zeros(*input_ids.shape, n_images, dtype=torch.long, device=input_ids.device)
    seen = index >= 0
    out[(*seen.nonzero(as_tuple=True), index[seen])] = 1
    return out


class Flamingo(WithLanguageModel, PreTrained, nn.Module):
    """forward(input_ids, pixel_values [B, I, 3, H, W], image_attention_mask [B, T, I], ...) -> logits [B, T, V]."""

    def __init__(self, cfg: FlamingoConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_tower = VisionEncoder(cfg.vision)
        self.resampler = PerceiverResampler(cfg.resampler, cfg.n_latents) if cfg.resampler is not None else None
        self.language_model = CausalLM(cfg.text)
        self.gated = nn.ModuleList(GatedCrossAttention(cfg.text, cfg.vision.d_model, cfg.gate_type)
                                   for _ in range(cfg.cross_layers))
        self.init_hooks()

    def new_layers(self) -> list[nn.Module]:
        """What Flamingo trains while the LM and the tower stay frozen: the resampler and the gated layers."""
        return [m for m in (self.resampler, self.gated) if m is not None]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, I, 3, H, W] (or [B, 3, H, W]: one image per row) -> the cross-attention's memory [B, I * image_tokens,
        C_v]."""
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be [batch, images, 3, height, width], got {tuple(pixel_values.shape)}")
        B, n = pixel_values.shape[:2]
        feats = self.vision_tower(pixel_values.flatten(0, 1)).last_hidden_state  # [B*I, S, C_v]
        if self.resampler is not None:
            feats = self.resampler(feats)  # [B*I, R, C_v]
        return feats.reshape(B, n * feats.shape[1], -1)

    def _visibility(self, image_attention_mask: torch.Tensor, per_image: int) -> tuple[MaskSpec, torch.Tensor]:
        allowed = image_attention_mask.bool().repeat_interleave(per_image, dim=-1)[:, None]  # [B, 1, T, I*R]
        return MaskSpec(causal=False, allowed=allowed), allowed[:, 0].any(-1)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, *,
                image_attention_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                reduction: str = "mean", cache: DecoderCache | None = None, logits_to_keep: int = 0,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] (or the loss with ``targets``). Without ``image_attention_mask`` it is built from the
        image tokens (``latest_image_mask``). ``image_features`` (from ``image_features``) skips the towers, as
        a cached generation does."""
        cfg = self.config
        lm = self.language_model
        images = image_features if image_features is not None else (
            self.image_features(pixel_values) if pixel_values is not None else None)
        before: Callable[[int, torch.Tensor], torch.Tensor] | None = None
        if images is not None:
            n_img = images.shape[1] // cfg.image_tokens
            if image_attention_mask is None:
                if cfg.image_token_id is None:
                    raise ValueError("image_attention_mask is needed (the config names no image_token_id to build it)")
                image_attention_mask = latest_image_mask(input_ids, cfg.image_token_id, n_img)
            if image_attention_mask.shape != (*input_ids.shape, n_img):
                raise ValueError(f"image_attention_mask shape {tuple(image_attention_mask.shape)} must be [batch, "
                                 f"seq_len, images] = {(*input_ids.shape, n_img)}")
            mask, sees = self._visibility(image_attention_mask, cfg.image_tokens)

            def before(i: int, x: torch.Tensor) -> torch.Tensor:
                return self.gated[i // cfg.cross_every](x, images, mask, sees) if i % cfg.cross_every == 0 else x

        offset = cache.length if cache is not None else 0
        if position_ids is None and attention_mask is not None:  # Idefics counts positions over real tokens
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
            position_ids = position_ids[:, -input_ids.shape[1]:]
        x, rope = lm.inputs(lm.embed, input_ids, position_ids=position_ids, offset=offset, norm=lm.embed_norm)
        x, _, _ = lm.run(x, rope=rope, attention_mask=attention_mask, cache=cache, before_block=before)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return lm.head(x) if targets is None else cross_entropy(lm.head(x), targets, reduction)

    def with_images(self, pixel_values: torch.Tensor, image_attention_mask: torch.Tensor | None = None
                    ) -> FlamingoPrompt:
        """A view generation drives like a CausalLM: the images encoded once, each new token seeing the image its
        prompt's last token saw."""
        return FlamingoPrompt(self, pixel_values, image_attention_mask)


class FlamingoPrompt(nn.Module):
    def __init__(self, model: Flamingo, pixel_values: torch.Tensor, image_attention_mask: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.pixel_values, self.image_mask = model, pixel_values, image_attention_mask
        self.virtual_tokens, self.prefix_length = 0, 0
        self._features: torch.Tensor | None = None
        self._last: torch.Tensor | None = None  # [B, 1, I]: what the newest token sees

    @property
    def config(self):
        return self.model.language_model.config

    @config.setter
    def config(self, value) -> None:
        self.model.language_model.config = value

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        return self.model.language_model.new_cache(capacity)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        cache = kwargs.get("cache")
        cfg = self.model.config
        if cache is None or cache.length == 0:  # the prompt: encode the images, build or take the mask
            self._features = self.model.image_features(self.pixel_values)
            n_img = self._features.shape[1] // cfg.image_tokens
            mask = self.image_mask
            if mask is None:
                mask = latest_image_mask(input_ids, cfg.image_token_id, n_img)
            self._last = mask[:, -1:]
        else:
            mask = self._last.expand(-1, input_ids.shape[1], -1)
        return self.model(input_ids, image_features=self._features, image_attention_mask=mask, **kwargs)
