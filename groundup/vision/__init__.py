"""Images in and image-text data: transformers-equal preprocessing (image.py), a synthetic shapes set drawn with
Pillow (synthetic.py), and loaders for folders of captioned images (data.py). Needs the ``vision`` extra
(Pillow); the models themselves (groundup.models.vision, .vlm) do not."""

from .image import MAX_PIXELS, ImageError, ImageProcessor, open_image

__all__ = ["MAX_PIXELS", "ImageError", "ImageProcessor", "open_image"]
