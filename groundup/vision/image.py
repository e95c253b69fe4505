"""Images in: files -> RGB -> resize -> centre crop -> rescale -> normalise -> pixel_values [N, 3, H, W].

The steps and their arithmetic are those of transformers' image processors (ViT, CLIP, SigLIP, LLaVA's
towers), so pixel values agree with theirs to float rounding: Pillow resizes the 8-bit image with the
model's filter, transparency is composited onto white, the crop is taken from the centre (zero-padded when
the image is smaller), rescaling multiplies in float64 before the cast to float32, and normalisation
subtracts the mean and divides by the standard deviation in float32. preprocessor_config.json holds the
settings; ``ImageProcessor.from_pretrained(folder)`` reads it.

Bad input fails before any pixel is decoded: a file Pillow cannot identify, a truncated one, or an image
over ``max_pixels`` (a decompression bomb would otherwise fill memory) is named with the fix.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils.files import FileError, atomic_write_text

MAX_PIXELS = 40_000_000  # width x height accepted by default: a 8000 x 5000 photo; more is refused unread
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class ImageError(FileError):
    """An input that is not a usable image, named with what would fix it."""


def pil():
    """The Pillow module, or an error naming the extra that installs it."""
    try:
        import PIL.Image
    except ModuleNotFoundError:
        raise ImageError("images need Pillow: pip install 'groundup[vision]' (or pip install pillow)") from None
    return PIL.Image


ImageLike = Any  # a path, bytes, or a PIL.Image.Image


def open_image(image: ImageLike, *, max_pixels: int = MAX_PIXELS, name: str = "image"):
    """A loaded PIL image from a path, bytes or a PIL image; refuses non-images, truncated files and images over
    ``max_pixels`` before decoding their pixels."""
    Image = pil()
    if isinstance(image, Image.Image):
        img, where = image, name
    else:
        where = str(image) if isinstance(image, str | Path) else name
        if isinstance(image, str | Path) and not Path(image).is_file():
            raise ImageError(f"{where}: no such image file")
        source = io.BytesIO(image) if isinstance(image, bytes | bytearray) else image
        try:
            img = Image.open(source)  # reads the header only
        except Exception as err:  # UnidentifiedImageError, OSError
            raise ImageError(f"{where} is not an image Pillow can read ({type(err).__name__}); give a PNG, JPEG, "
                             "WebP, BMP or GIF file") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{where} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}: downscale it "
                         "first, or raise max_pixels if the file is trusted")
    try:
        img.load()
    except Exception as err:
        raise ImageError(f"{where}: the image data is corrupt or truncated ({err})") from None
    return img


def to_rgb(img):
    """RGB with any transparency composited onto white (what transformers' convert_to_rgb does)."""
    Image = pil()
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _uint8_chw(img) -> torch.Tensor:
    """A PIL image -> uint8 [C, H, W] (grey images get one channel)."""
    w, h = img.size
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(h, w, -1).permute(2, 0, 1)


def _size(spec: Any, square: bool) -> dict[str, int]:
    if isinstance(spec, int):
        return {"height": spec, "width": spec} if square else {"shortest_edge": spec}
    if isinstance(spec, dict) and ("shortest_edge" in spec or {"height", "width"} <= set(spec)):
        return {k: int(v) for k, v in spec.items() if v is not None}
    raise ImageError(f"size={spec!r}: give {{'shortest_edge': N}}, {{'height': H, 'width': W}} or an integer")


@dataclass
class ImageProcessor:
    """The preprocessing of one model (preprocessor_config.json's fields). Call it on a list of images."""

    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = 3  # Pillow's filter code: 3 bicubic (CLIP, SigLIP), 2 bilinear (ViT)
    do_resize: bool = True
    do_center_crop: bool = True
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    do_convert_rgb: bool = True
    max_pixels: int = MAX_PIXELS

    @classmethod
    def for_size(cls, size: int, *, mean: Sequence[float] = HALF, std: Sequence[float] = HALF,
                 resample: str = "bicubic") -> ImageProcessor:
        """Resize to size x size, no crop (SigLIP's, and the synthetic models' processor)."""
        return cls(size={"height": size, "width": size}, do_center_crop=False, image_mean=tuple(mean),
                   image_std=tuple(std), resample=FILTERS[resample])

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "preprocessor_config.json") -> ImageProcessor:
        """From preprocessor_config.json's fields (the image_processor_type says how a bare integer size reads)."""
        kind = str(data.get("image_processor_type", ""))
        square = not kind.startswith(("CLIP", "Llava"))  # CLIP's integer size is the shortest edge
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            if "size" in kwargs:
                kwargs["size"] = _size(kwargs["size"], square)
            if "crop_size" in kwargs:
                kwargs["crop_size"] = _size(kwargs["crop_size"], True)
            for k in ("image_mean", "image_std"):
                if k in kwargs:
                    v = kwargs[k]
                    kwargs[k] = tuple(v) if isinstance(v, list | tuple) else (float(v),) * 3
            kwargs.setdefault("do_center_crop", False)
            return cls(**kwargs)
        except (ImageError, TypeError) as err:
            raise ImageError(f"{source}: {err}") from None

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImageProcessor:
        """The processor of a model folder (its preprocessor_config.json)."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise ImageError(f"{path} does not exist: the model folder needs its preprocessor_config.json (or build "
                             "an ImageProcessor with the model's size, mean and std)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ImageError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        return cls.from_dict(data, str(path))

    def save_pretrained(self, folder: str | Path, kind: str = "CLIPImageProcessor") -> Path:
        """preprocessor_config.json in a folder (atomic), as transformers reads it."""
        data = {**dataclasses.asdict(self), "image_processor_type": kind}
        data.pop("max_pixels")
        return atomic_write_text(Path(folder) / "preprocessor_config.json", json.dumps(data, indent=2) + "\n")

    # ---------------------------------------------------------------------------------------------
    def _resized(self, img):
        if not self.do_resize:
            return img
        w, h = img.size
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s, int(s * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_w, new_h = self.size["width"], self.size["height"]
        return img.resize((new_w, new_h), resample=self.resample)

    def _cropped(self, x: torch.Tensor) -> torch.Tensor:
        if not self.do_center_crop:
            return x
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        _, h, w = x.shape
        top, left = (h - ch) // 2, (w - cw) // 2
        if top >= 0 and left >= 0:
            return x[:, top:top + ch, left:left + cw]
        # smaller than the crop: centred on a zero canvas first (transformers' rule), then cropped
        nh, nw = max(ch, h), max(cw, w)
        canvas = x.new_zeros(x.shape[0], nh, nw)
        t0, l0 = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        canvas[:, t0:t0 + h, l0:l0 + w] = x
        top, left = (nh - ch) // 2, (nw - cw) // 2
        return canvas[:, top:top + ch, left:left + cw]

    def preprocess(self, image: ImageLike, name: str = "image") -> torch.Tensor:
        """One image -> float32 [3, H, W]."""
        img = open_image(image, max_pixels=self.max_pixels, name=name)
        img = to_rgb(img) if self.do_convert_rgb else img
        x = _uint8_chw(self._resized(img))
        x = self._cropped(x)
        x = (x.double() * self.rescale_factor).float() if self.do_rescale else x.float()
        if self.do_normalize:
            if len(self.image_mean) != x.shape[0] or len(self.image_std) != x.shape[0]:
                raise ImageError(f"image_mean/image_std have {len(self.image_mean)}/{len(self.image_std)} values for "
                                 f"{x.shape[0]} channels")
            mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
            std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
            x = (x - mean) / std
        return x

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images of any sizes -> pixel_values [N, 3, H, W] (one size after resizing and cropping)."""
        if not isinstance(images, list | tuple):
            images = [images]
        if not images:
            raise ImageError("no images given")
        out = [self.preprocess(im, name=f"images[{i}]") for i, im in enumerate(images)]
        shapes = {tuple(x.shape) for x in out}
        if len(shapes) > 1:
            raise ImageError(f"the images came out in {len(shapes)} sizes {sorted(shapes)}: set a square size "
                             "or a crop so a batch has one shape")
        return torch.stack(out)
