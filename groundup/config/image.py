"""ImageConfig: how a vision encoder (``Config(arch="vision")``: ViT, the image towers of CLIP, SigLIP and LLaVA;
Dosovitskiy et al., 2021) turns an image into tokens and pools them. ``Config.image`` is None for a text model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .checks import Record, check_literals

# a vision encoder's pooled output: the [CLS] token, attention pooling by a learned probe (SigLIP's MAP head,
# Zhai et al., 2023; Lee et al., 2019), or none
VisionPool = Literal["cls", "map", "none"]


@dataclass
class ImageConfig(Record):
    """The image is cut into patch_size x patch_size patches, each projected to d_model by a strided convolution;
    learned positions, one per patch (+ [CLS])."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    patch_bias: bool = True  # CLIP's patch projection has no bias
    cls_token: bool = True  # a learned [CLS] before the patches (ViT, CLIP); SigLIP has none
    vision_pool: VisionPool = "cls"
    pool_norm: bool = False  # a norm on the pooled [CLS] only (CLIP's post_layernorm; its final_norm is off)

    def __post_init__(self) -> None:
        check_literals(self)
        for name in ("image_size", "patch_size", "num_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}: the "
                             "image must split into whole patches")
        if self.vision_pool == "cls" and not self.cls_token:
            raise ValueError("vision_pool='cls' pools the [CLS] token: set cls_token=True or vision_pool='map'")
        if self.pool_norm and self.vision_pool != "cls":
            raise ValueError("pool_norm normalises the pooled [CLS] token: it needs vision_pool='cls'")

    @property
    def tokens(self) -> int:
        """Tokens an image at image_size becomes: patches (+ [CLS]); 577 for ViT-L/14 at 336."""
        return (self.image_size // self.patch_size) ** 2 + int(self.cls_token)

