"""Vision encoders and dual encoders on the same Stack as the language models.

VisionEncoder (ViT, Dosovitskiy et al., 2021; the image towers of CLIP, SigLIP and LLaVA): the image is cut
into patch_size x patch_size patches, each projected to d_model by a strided convolution (one matrix applied
to every flattened patch), a learned [CLS] goes in front, learned positions are added (interpolated
bicubically for another resolution), then the bidirectional blocks. What differs between the towers is
Config data: CLIP normalises the embeddings (embed_norm, its "pre_layrnorm") and only the pooled [CLS]
(pool_norm); ViT normalises every token (final_norm) and classifies the [CLS]; SigLIP has no [CLS] and pools
with a learned probe that attends over the tokens (vision_pool="map").

TextTower: token + learned positions, a causal (CLIP) or bidirectional (SigLIP) stack, the final norm, one
token's state as the text's vector. CLIP: the two towers and the contrastive loss (Radford et al., 2021);
SigLIP's sigmoid loss (Zhai et al., 2023) is the same class with CLIPConfig(loss="sigmoid").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..multimodal import CLIPConfig
from ..nn.attention import Attention, MaskSpec
from ..nn.linear import Linear
from ..nn.mlp import make_ffn
from ..nn.norm import make_norm
from .base import PreTrained
from .common import check_ids, dropout, init_weights
from .encoder import Pooler
from .stack import Stack


@dataclass
class VisionOutput:
    """A vision encoder's outputs under transformers' names: ``last_hidden_state`` [B, N, C], ``pooler_output``
    [B, C] (None without pooling), ``logits`` [B, num_labels] (None without a classifier), ``hidden_states`` (the
    embeddings and each block's output, when asked)."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPOutput:
    """A dual encoder's outputs under transformers' names; ``loss`` when asked (return_loss=True)."""

    logits_per_image: torch.Tensor  # [B_img, B_txt]
    logits_per_text: torch.Tensor  # [B_txt, B_img]
    text_embeds: torch.Tensor  # [B_txt, P], unit length
    image_embeds: torch.Tensor  # [B_img, P], unit length
    loss: torch.Tensor | None = None


def check_pixels(cfg: Config, pixel_values: torch.Tensor, interpolate: bool) -> None:
    """Shape and dtype checks naming the argument, before any compute."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a tensor [batch, {cfg.image.num_channels}, height, width], got {shape} "
                         "(groundup.vision.ImageProcessor makes it from images)")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floats (rescaled and normalised), got dtype {pixel_values.dtype}")
    _, c, h, w = pixel_values.shape
    if c != cfg.image.num_channels:
        raise ValueError(f"pixel_values have {c} channels, the model takes num_channels={cfg.image.num_channels}")
    if h % cfg.image.patch_size or w % cfg.image.patch_size:
        raise ValueError(f"pixel_values are {h}x{w}, not a multiple of patch_size={cfg.image.patch_size}")
    size = cfg.image.image_size
    if not interpolate and (h, w) != (size, size):
        raise ValueError(f"pixel_values are {h}x{w}, the model was trained at {size}x{size}: "
                         "resize the image, or pass interpolate_pos_encoding=True to interpolate the positions")


class AttentionPool(nn.Module):
    """SigLIP's multihead attention pooling (MAP; Lee et al., 2019): a learned probe attends over the tokens,
    then a normed FFN is added: [B, N, C] -> [B, C]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.attn = Attention(cfg.replace(attn_bias=True, attn_out_bias=True))
        self.norm = make_norm(cfg)
        self.mlp = make_ffn(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)  # [B, 1, C]
        h, _ = self.attn(probe, MaskSpec(causal=False), memory=x)  # [B, 1, C]
        return (h + self.mlp(self.norm(h)))[:, 0]


class VisionEncoder(PreTrained, Stack):
    """pixel_values [B, 3, H, W] -> VisionOutput. forward(pixel_values, interpolate_pos_encoding=False)."""

    def __init__(self, cfg: Config) -> None:
        if cfg.arch != "vision":
            raise ValueError(f"VisionEncoder needs arch='vision', got arch={cfg.arch!r}")
        super().__init__(cfg, cfg.n_layers, causal=False)
        p = cfg.image.patch_size
        # a p x p convolution with stride p is one [C, 3 p p] matrix applied to each flattened patch
        self.patch_embed = nn.Conv2d(cfg.image.num_channels, cfg.d_model, p, stride=p, bias=cfg.image.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.image.cls_token else None
        self.embed_norm = make_norm(cfg) if cfg.embed_norm else None
        self.pool_norm = make_norm(cfg) if cfg.image.pool_norm else None
        self.head = AttentionPool(cfg) if cfg.image.vision_pool == "map" else None
        self.pooler = Pooler(cfg) if cfg.heads.pooler else None
        self.classifier = Linear(cfg.d_model, cfg.heads.num_labels) if cfg.heads.num_labels else None
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.impl.init_std))
            for param in (self.cls_token, self.head.probe if self.head is not None else None):
                if param is not None:
                    nn.init.normal_(param, std=cfg.impl.init_std)

    def tie_weights(self) -> None:
        """Nothing is tied in a vision encoder (the checkpoint loader calls this on every model)."""

    def tied_keys(self) -> dict[str, str]:
        return {}

    @property
    def grid(self) -> int:
        """Patches per side at the trained resolution."""
        return self.config.image.image_size // self.config.image.patch_size

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Learned positions [N (+1), C] for an h x w grid of patches: the table itself at the trained grid, else
        its patch part resized bicubically (as transformers' interpolate_pos_encoding does)."""
        table = self.pos_embed.weight  # [(1 +) g g, C]
        g, n_cls = self.grid, int(self.config.image.cls_token)
        if (h, w) == (g, g):
            return table
        grid = table[n_cls:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # [1, C, g, g]
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([table[:n_cls], grid.permute(0, 2, 3, 1).reshape(h * w, -1)])  # [(1 +) h w, C]

    def embeddings(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> the stack's input [B, N, C]: patches, [CLS], positions, embed norm."""
        check_pixels(self.config, pixel_values, interpolate_pos_encoding)
        w = self.patch_embed.weight
        x = self.patch_embed(pixel_values.to(w.dtype))  # [B, C, H/p, W/p]
        h, wd = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + N, C]
        x = x + self.positions(h, wd)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return dropout(self.config, x, self.training)

    def forward(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False,
                output_hidden_states: bool = False) -> VisionOutput:
        """pixel_values [B, 3, H, W] (groundup.vision.ImageProcessor's) -> VisionOutput: the last hidden state
        [B, N, C], the pooled vector, the classifier's logits, and with ``output_hidden_states`` the embeddings
        and every block's output."""
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        states: list[torch.Tensor] | None = [] if output_hidden_states else None
        h, _, _ = self.run(x, hidden_states=states)
        pooled = logits = None
        if self.head is not None:
            pooled = self.head(h)
        elif self.config.image.vision_pool == "cls":
            pooled = h[:, 0] if self.pool_norm is None else self.pool_norm(h[:, 0])
        if self.pooler is not None:  # ViTModel's dense + tanh on the [CLS]
            pooled = self.pooler(h)
        if self.classifier is not None:  # ViTForImageClassification reads the normed [CLS], not the pooler
            logits = self.classifier(h[:, 0])
        return VisionOutput(h, pooled, logits, tuple(states) if states is not None else None)

    def features(self, pixel_values: torch.Tensor, n_blocks: int, *, interpolate_pos_encoding: bool = False
                 ) -> torch.Tensor:
        """transformers' hidden_states[n_blocks]: the output of the first ``n_blocks`` blocks [B, N, C] (0: the
        embeddings), running no block after them; what LLaVA's projector reads."""
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        mask = MaskSpec(causal=False)
        for block in self.blocks[:n_blocks]:
            x = block(x, mask)[0]
        return x


class TextTower(PreTrained, Stack):
    """The text half of a dual encoder: input_ids [B, T] -> (hidden [B, T, C], pooled [B, C'])."""

    def __init__(self, cfg: Config, *, pool: str = "eos", head: int = 0) -> None:
        super().__init__(cfg, cfg.n_layers, causal=bool(cfg.causal))
        self.pool = pool
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.head = Linear(cfg.d_model, head) if head else None  # SigLIP's projection, with bias
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()):
            self.apply(lambda m: init_weights(m, cfg.impl.init_std))

    def tie_weights(self) -> None:
        """A text tower has no output head to tie."""

    def tied_keys(self) -> dict[str, str]:
        return {}

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The final-norm hidden states [B, T, C] and the pooled text vector [B, C] (through the head if any)."""
        check_ids(self.config, input_ids, attention_mask)
        x, rope = self.inputs(self.embed, input_ids)
        h, _, _ = self.run(x, rope=rope, attention_mask=attention_mask)
        rows = torch.arange(h.shape[0], device=h.device)
        if self.pool == "last":
            pooled = h[:, -1]
        elif self.pool == "argmax":
            pooled = h[rows, input_ids.argmax(-1)]
        else:  # the first end-of-text token of each row
            pooled = h[rows, (input_ids == self.config.eos_ids[0]).int().argmax(-1)]
        return h, pooled if self.head is None else self.head(pooled)


class CLIP(PreTrained, nn.Module):
    """A dual encoder (CLIP, SigLIP): forward(input_ids, pixel_values, attention_mask=None) -> CLIPOutput."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.text = TextTower(cfg.text, pool=cfg.text_pool, head=cfg.projection_dim if cfg.text_head else 0)
        if cfg.projection:
            self.visual_projection = Linear(cfg.vision.d_model, cfg.projection_dim, bias=False)
            self.text_projection = Linear(cfg.text.d_model, cfg.projection_dim, bias=False)
        else:
            self.visual_projection = self.text_projection = None
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))  # log of the temperature's inverse
        sigmoid = cfg.loss == "sigmoid"
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.logit_bias_init))) if sigmoid else None
        self.init_hooks()
        if not any(p.is_meta for p in self.parameters()) and cfg.projection:
            for m in (self.visual_projection, self.text_projection):
                init_weights(m, cfg.text.impl.init_std)

    def tie_weights(self) -> None:
        """Nothing is tied across the towers."""

    def tied_keys(self) -> dict[str, str]:
        return {}

    def set_attn_kernel(self, kernel: str) -> CLIP:
        self.vision.set_attn_kernel(kernel)
        self.text.set_attn_kernel(kernel)
        return self

    def get_image_features(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False
                           ) -> torch.Tensor:
        """Image embeddings [B, P] before normalisation (transformers' get_image_features)."""
        pooled = self.vision(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).pooler_output
        return pooled if self.visual_projection is None else self.visual_projection(pooled)

    def get_text_features(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """Text embeddings [B, P] before normalisation (transformers' get_text_features)."""
        pooled = self.text(input_ids, attention_mask=attention_mask)[1]
        return pooled if self.text_projection is None else self.text_projection(pooled)

    def similarity(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """logits_per_text [B_txt, B_img] from unit-length embeddings: scaled cosines (+ SigLIP's bias)."""
        logits = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, *,
                attention_mask: torch.Tensor | None = None, return_loss: bool = False,
                interpolate_pos_encoding: bool = False) -> CLIPOutput:
        """Every text against every image. With ``return_loss`` the i-th text and i-th image are the positive
        pair: CLIP's symmetric cross-entropy over both directions, or SigLIP's sigmoid loss over all pairs."""
        image = F.normalize(self.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding),
                            dim=-1)
        text = F.normalize(self.get_text_features(input_ids, attention_mask=attention_mask), dim=-1)
        per_text = self.similarity(image, text)  # [B_txt, B_img]
        loss = contrastive_loss(per_text, self.config.loss) if return_loss else None
        return CLIPOutput(per_text.t(), per_text, text, image, loss)


def contrastive_loss(logits_per_text: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """The loss of a batch of matching pairs (text i with image i). softmax (InfoNCE, Oord et al., 2018; CLIP): the
    mean of the cross-entropies picking the right image for each text and the right text for each image.
    sigmoid (SigLIP): every pair is a binary decision, -sum_j log sigmoid(z_ij (2 [i = j] - 1)), averaged over i."""
    n = logits_per_text.shape[0]
    if logits_per_text.shape != (n, n):
        raise ValueError(f"a contrastive loss needs as many texts as images, got logits {tuple(logits_per_text.shape)}")
    logits = logits_per_text.float()
    if kind == "sigmoid":
        labels = 2 * torch.eye(n, device=logits.device) - 1
        return -F.logsigmoid(labels * logits).sum(-1).mean()
    target = torch.arange(n, device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
