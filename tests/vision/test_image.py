"""groundup.vision.ImageProcessor against transformers' image processors (their Pillow backend) on real-size
images generated here: the same pixel values to 1e-6, for batches of images of different sizes and modes."""

from __future__ import annotations

import io

import pytest
import torch

from groundup.vision import ImageError, ImageProcessor

Image = pytest.importorskip("PIL.Image")
T = pytest.importorskip("transformers")


def _photo(w: int, h: int, mode: str = "RGB", seed: int = 0):
    """A smooth gradient with noise and a shape: content every filter treats differently."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    rgb = torch.stack([x, y, (x + y) / 2]) * 200 + torch.rand(3, h, w, generator=g) * 55  # [3, H, W]
    img = Image.fromarray(rgb.clamp(0, 255).byte().permute(1, 2, 0).numpy(), "RGB")
    if mode == "RGBA":
        img.putalpha(Image.fromarray((x * 255).byte().numpy(), "L"))
    return img.convert(mode) if mode in ("L", "P") else img


IMAGES = [("RGB", 640, 480), ("RGB", 333, 517), ("RGBA", 400, 300), ("L", 250, 260), ("P", 120, 90)]


@pytest.mark.parametrize("name", ["CLIPImageProcessorPil", "ViTImageProcessorPil", "SiglipImageProcessorPil"])
def test_pixel_values_equal_transformers(name, tmp_path):
    ref = getattr(T, name)()
    ref.save_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    # ViT's processor converts nothing to RGB (its config has no do_convert_rgb): RGB input only there; ours
    # converts every mode, which is where the two may differ
    shown = [s for s in IMAGES if s[0] == "RGB"] if name.startswith("ViT") else IMAGES
    images = [_photo(w, h, mode, seed=i) for i, (mode, w, h) in enumerate(shown)]
    want = ref(images=images, return_tensors="pt")["pixel_values"]
    got = ours(images)
    assert got.shape == want.shape == (len(images), 3, 224, 224)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_a_small_image_is_padded_into_the_crop_as_transformers_does():
    ref = T.CLIPImageProcessorPil(do_resize=False)
    ours = ImageProcessor(do_resize=False)
    img = _photo(150, 120)
    torch.testing.assert_close(ours([img]), ref(images=[img], return_tensors="pt")["pixel_values"], atol=1e-6, rtol=0)


def test_bad_images_are_refused_naming_the_file(tmp_path):
    proc = ImageProcessor()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match=r"notes.png is not an image Pillow can read"):
        proc([text])
    buf = io.BytesIO()
    _photo(64, 64).save(buf, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut.png: the image data is corrupt or truncated"):
        proc([cut])
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(big)
    with pytest.raises(ImageError, match=r"big.png is 3000x2000 = 6,000,000 pixels, over the limit of 1,000,000"):
        ImageProcessor(max_pixels=1_000_000)([big])
    with pytest.raises(ImageError, match="no such image file"):
        proc([tmp_path / "missing.jpg"])
