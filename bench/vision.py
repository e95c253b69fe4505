"""Image encoding, image preprocessing and LLaVA generation: groundup vs transformers, same weights, one process.

    python bench/vision.py [--repeats 7] [--out docs/vision_bench.md]

Encoding: the vision tower of CLIP ViT-B/32 (224 px, random init) saved by transformers and loaded by
groundup, batches of 1, 8 and 32 images. Preprocessing: 16 photos of 640x480 through transformers'
CLIPImageProcessor (Pillow backend) and groundup.vision.ImageProcessor. Generation: a LLaVA of a ViT-B/32
tower and a 6-layer Llama-style LM of width 512 (49 visual tokens), one image, 32 new tokens greedy, against
LlavaForConditionalGeneration.generate. Calls alternate between the two (warm-up first); medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from report import alternate, command, emit

import groundup as gu

TOWER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
             patch_size=32)


def encoding(tmp: Path, repeats: int) -> list[str]:
    import transformers as T

    torch.manual_seed(0)
    small_text = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    hf = T.CLIPModel(T.CLIPConfig(vision_config=TOWER, text_config=small_text)).eval()
    hf.save_pretrained(tmp / "clip")
    ours = gu.from_pretrained(tmp / "clip")
    rows = ["| images | transformers ms | groundup ms | speed-up |", "|---:|---:|---:|---:|"]
    with torch.inference_mode():
        for n in (1, 8, 32):
            px = torch.randn(n, 3, 224, 224)
            for _ in range(2):
                hf.get_image_features(pixel_values=px)
                ours.get_image_features(px)
            t_hf, t_gu = alternate(lambda px=px: hf.get_image_features(pixel_values=px),
                                   lambda px=px: ours.get_image_features(px), repeats)
            rows.append(f"| {n} | {t_hf * 1e3:.1f} | {t_gu * 1e3:.1f} | {t_hf / t_gu:.2f}x |")
    return rows


def preprocessing(repeats: int) -> list[str]:
    import transformers as T
    from PIL import Image

    from groundup.vision import ImageProcessor

    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(480, 640, 3, generator=g) * 255).byte().numpy(), "RGB") for _ in range(16)]
    ref, ours = T.CLIPImageProcessorPil(), ImageProcessor()
    ref(images=images, return_tensors="pt")
    ours(images)
    t_hf, t_gu = alternate(lambda: ref(images=images, return_tensors="pt"), lambda: ours(images), repeats)
    return ["| 16 photos 640x480 -> 224 | transformers ms | groundup ms | speed-up |", "|---|---:|---:|---:|",
            f"| CLIP preprocessing | {t_hf * 1e3:.1f} | {t_gu * 1e3:.1f} | {t_hf / t_gu:.2f}x |"]


def generation(tmp: Path, repeats: int, new: int = 32) -> list[str]:
    import transformers as T

    torch.manual_seed(0)
    text = dict(model_type="llama", hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=1376, vocab_size=32064, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    hf = T.LlavaForConditionalGeneration(T.LlavaConfig(vision_config=dict(TOWER, model_type="clip_vision_model"),
                                                       text_config=text, image_token_index=32000)).eval()
    hf.generation_config.pad_token_id = 0
    hf.save_pretrained(tmp / "llava")
    ours = gu.from_pretrained(tmp / "llava")
    ids = torch.tensor([ours.expand_image_tokens([1, 32000, *range(100, 120)])])
    px = torch.randn(1, 3, 224, 224)

    def run_hf():
        return hf.generate(input_ids=ids, pixel_values=px, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    def run_gu():
        return gu.generate(ours.with_images(px), ids, new, eos_token_id=None)

    with torch.inference_mode():
        a, b = run_hf(), run_gu()
        same = a[0, ids.shape[1]:].tolist() == b[0, ids.shape[1]:].tolist()
        t_hf, t_gu = alternate(run_hf, run_gu, repeats)
    return [f"| LLaVA generation ({ids.shape[1]}-token prompt with 49 visual tokens, {new} new) | transformers s | "
            "groundup s | speed-up | same tokens |", "|---|---:|---:|---:|---|",
            f"| greedy, batch 1 | {t_hf:.3f} | {t_gu:.3f} | {t_hf / t_gu:.2f}x | {same} |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"`{command()}`", "", "Image encoding (CLIP ViT-B/32 tower, fp32):", "",
                 *encoding(Path(tmp), args.repeats), "", *preprocessing(args.repeats), "",
                 *generation(Path(tmp), max(3, args.repeats // 2))]
    emit("Vision: encoding, preprocessing and LLaVA generation vs transformers", lines, args.out)


if __name__ == "__main__":
    main()
