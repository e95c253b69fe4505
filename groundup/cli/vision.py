"""`groundup clip train | classify | search`: a dual encoder (CLIP, SigLIP) trained here, zero-shot classification
from prompts, and text -> image retrieval, on any CLIP or SigLIP folder; `groundup llava train` and `groundup flamingo
train`: the two ways of giving a language model eyes, trained here on the synthetic questions; and `groundup generate
FOLDER --image` for LLaVA folders."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint.hf import from_pretrained
from ..models.vision import CLIP
from ..models.vlm import Llava
from ..tokenizer import Tokenizer
from ..train import clip as clip_train
from ..train import flamingo as flamingo_train
from ..train import llava as llava_train
from ..train.clip import CLIPSettings, embed_images, embed_texts, zero_shot
from ..vision import ImageProcessor
from ..vision.data import process_all
from .generate import decoding_options, stream_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _load(folder: str):
    if not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{folder}: no config.json; give a CLIP or SigLIP model folder")
    model = from_pretrained(folder)
    if not isinstance(model, CLIP):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not a CLIP or SigLIP dual encoder")
    return model, Tokenizer.from_pretrained(folder), ImageProcessor.from_pretrained(folder)


def _images(paths: list[str]) -> list[Path]:
    """Files, and the images inside folders (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p])
    if not out:
        raise ValueError(f"no images in {', '.join(paths)}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    settings = CLIPSettings(out_dir=args.out, data=args.data, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, loss=args.loss, train_size=args.train_size, test_size=args.test_size,
                            seed=args.seed, image_size=args.image_size)
    r = clip_train.run(settings)
    print(f"trained {r['parameters']:,} parameters in {r['train_seconds']}s -> {r['folder']}")
    print(f"text -> image recall@1 {r['recall@1']:.3f}, recall@5 {r['recall@5']:.3f}")
    if "zero_shot_pair" in r:
        print(f"zero-shot on held-out images: colour+shape {r['zero_shot_pair']:.3f} (24 labels), colour "
              f"{r['zero_shot_colour']:.3f}, shape {r['zero_shot_shape']:.3f}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if len(labels) < 2:
        raise ValueError("--labels needs at least two labels, comma-separated")
    if "{}" not in args.template:
        raise ValueError(f"--template {args.template!r} needs a {{}} where the label goes")
    model, tok, proc = _load(args.model)
    files = _images(args.images)
    probs = zero_shot(model, tok, process_all(files, proc), labels, args.template)
    for f, p in zip(files, probs, strict=True):
        top = p.topk(min(3, len(labels)))
        pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        shown = ", ".join(f"{labels[i]} {v:.3f}" for v, i in pairs)
        print(f"{f}: {shown}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    model, tok, proc = _load(args.model)
    files = _images(args.images)
    with torch.no_grad():
        scores = model.similarity(embed_images(model, process_all(files, proc)), embed_texts(model, tok, [args.query]))
    top = scores[0].topk(min(args.top, len(files)))
    print(f"best matches for {args.query!r} among {len(files)} images:")
    for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  {v:8.3f}  {files[i]}")
    return 0


def cmd_generate_image(args: argparse.Namespace) -> int:
    """`groundup generate LLAVA_FOLDER --image a.png "question"`: the answer streamed after the prompt."""
    import sys

    model = from_pretrained(args.model)
    if not isinstance(model, Llava):
        raise ValueError(f"--image needs a vision-language (LLaVA) folder; {args.model} holds a {type(model).__name__}")
    tok = Tokenizer.from_pretrained(args.model)
    marker = tok.id_to_token(model.config.image_token_id)
    images = args.image or []
    pixels = ImageProcessor.from_pretrained(args.model)(images) if images else None
    opts = decoding_options(args)
    stop = model.config.text.eos_ids or ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    for text in args.text:
        if marker not in text and images:
            text = f"USER: {(marker + chr(10)) * len(images)}{text} ASSISTANT:"  # LLaVA-1.5's conversation format
        ids = tok.encode(text, allowed_special={marker})
        given = sum(i == model.config.image_token_id for i in ids)
        if given != len(images):
            raise ValueError(f"the prompt has {given} {marker} placeholder(s) for {len(images)} --image file(s): "
                             "give one image per placeholder")
        sys.stdout.write(text)
        stream_text(model.with_images(pixels), tok, model.expand_image_tokens(ids), args, sys.stdout, stop, opts)
        sys.stdout.write("\n")
    return 0


def _print_scores(name: str, scores: dict[str, float]) -> None:
    print(f"  {name:<16} " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


def cmd_llava_train(args: argparse.Namespace) -> int:
    settings = llava_train.LlavaSettings(out_dir=args.out, clip=args.clip, tune_steps=args.steps, seed=args.seed)
    r = llava_train.run(settings)
    print(f"LLaVA -> {r['folder']} ({r['image_tokens']} visual tokens per image); held-out exact match:")
    _print_scores("LM without image", r["lm_alone"])
    _print_scores("with the image", r["with_image"])
    return 0


def cmd_flamingo_train(args: argparse.Namespace) -> int:
    settings = flamingo_train.FlamingoSettings(out_dir=args.out, clip=args.clip, steps=args.steps, seed=args.seed)
    r = flamingo_train.run(settings)
    print(f"Flamingo -> {r['folder']} (LM frozen: unchanged {r['lm_unchanged']}); held-out exact match:")
    _print_scores("LM without image", r["lm_alone"])
    for k in (0, 1, 2):
        if f"{k}_shot" in r:
            _print_scores(f"{k}-shot", r[f"{k}_shot"])
    return 0


def add_vision_parser(sub) -> None:
    c = sub.add_parser("clip", help="dual encoders: train one here, zero-shot classify images, search images by text")
    cs = c.add_subparsers(dest="clip_command", required=True)
    t = cs.add_parser("train", help="train a small CLIP from scratch (default: the synthetic shapes set)")
    t.add_argument("--out", default="out/clip")
    t.add_argument("--data", default=None, help="a folder with train.jsonl and test.jsonl (or .csv) captions")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--loss", choices=("softmax", "sigmoid"), default="softmax", help="CLIP's InfoNCE or SigLIP's")
    t.add_argument("--train-size", type=int, default=4000)
    t.add_argument("--test-size", type=int, default=400)
    t.add_argument("--image-size", type=int, default=32)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)
    k = cs.add_parser("classify", help="zero-shot classification: which label's prompt matches each image")
    k.add_argument("model", help="a CLIP or SigLIP folder")
    k.add_argument("images", nargs="+", help="image files or folders of images")
    k.add_argument("--labels", required=True, help="comma-separated labels, e.g. 'cat,dog,car'")
    k.add_argument("--template", default="a photo of a {}", help="the prompt; {} is replaced by each label")
    k.set_defaults(func=cmd_classify)
    s = cs.add_parser("search", help="text -> image retrieval: rank images by a query")
    s.add_argument("model", help="a CLIP or SigLIP folder")
    s.add_argument("query")
    s.add_argument("images", nargs="+", help="image files or folders of images")
    s.add_argument("--top", type=int, default=5)
    s.set_defaults(func=cmd_search)
    models = (("llava", cmd_llava_train, "LLaVA's stages: the LM, the projector on captions, projector + LM on "
               "questions"),
              ("flamingo", cmd_flamingo_train, "Flamingo: a frozen LM, only the resampler and gated cross-attention "
               "trained; few-shot measured"))
    for name, func, what in models:
        steps = 1000
        top = sub.add_parser(name, help=f"train a small vision-language model here ({what})")
        ts = top.add_subparsers(dest=f"{name}_command", required=True).add_parser("train", help=what)
        ts.add_argument("--clip", default="out/clip/model", help="a CLIP folder (groundup clip train) for the tower")
        ts.add_argument("--out", default=f"out/{name}")
        ts.add_argument("--steps", type=int, default=steps, help="steps of the image stage")
        ts.add_argument("--seed", type=int, default=0)
        ts.set_defaults(func=func)
