"""Contrastive image-text training on the one loop: a small CLIP (or SigLIP) from scratch on captioned images,
then zero-shot classification from prompts and text -> image retrieval on the held-out split.

``groundup clip train`` runs it; without ``--data`` it trains on the synthetic shapes set
(groundup.vision.synthetic), so it needs no download. The folder it writes is a transformers CLIP folder
(config.json, safetensors, tokenizer.json, preprocessor_config.json) that ``groundup clip classify|search``
and transformers' CLIPModel both read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models.vision import CLIP
from ..multimodal import CLIPConfig
from ..tokenizer import Tokenizer
from ..utils.files import atomic_write_text
from ..vision import ImageProcessor, synthetic
from ..vision.data import ImageTextData, encode_texts, pad_ids, process_all, read_captions
from .loop import TrainArgs, train
from .objective import TrainObjective

# the prompt ensemble of the synthetic set's zero-shot evaluation: every form its captions take
TEMPLATES = ("a {} on the left", "a {} on the right", "a {} on the top", "a {} on the bottom", "a {} in the centre",
             "two {}s", "three {}s")
SPECIALS = ("<pad>", "<|endoftext|>", "<|startoftext|>")  # eos is id 1: transformers pools CLIP at eos when != 2


@dataclass
class CLIPSettings:
    """A small dual encoder and its run (every field has a default that trains in minutes on 2 cores)."""

    out_dir: str = "out/clip"
    data: str | None = None  # a folder with train.jsonl / test.jsonl (or .csv); None: the synthetic shapes
    train_size: int = 4000
    test_size: int = 400
    image_size: int = 32
    patch_size: int = 8
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    text_layers: int = 2
    projection_dim: int = 64
    context: int = 16
    vocab_size: int = 320
    loss: str = "softmax"  # softmax (CLIP) | sigmoid (SigLIP's loss on the same towers)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    progress: bool = True


class ContrastiveObjective(TrainObjective):
    """The loop's loss: the model's contrastive loss over a batch of matching pairs; metrics: in-batch image
    retrieval accuracy (the share of texts whose own image scores highest)."""

    shown = ("acc",)

    def __init__(self) -> None:
        self._hits, self._n = 0, 0

    def loss(self, model, batch, index: int, reduction: str = "mean", rows=None) -> tuple[torch.Tensor, int]:
        out = model(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask, return_loss=True)
        n = batch.input_ids.shape[0]
        target = torch.arange(n, device=out.logits_per_text.device)
        self._hits += int((out.logits_per_text.argmax(-1) == target).sum())
        self._n += n
        return (out.loss * n if reduction == "sum" else out.loss), n

    def metrics(self) -> dict[str, float]:
        out = {"acc": self._hits / self._n} if self._n else {}
        self._hits, self._n = 0, 0
        return out


def build(settings: CLIPSettings, tokenizer: Any) -> CLIP:
    s = settings
    vision = Config(arch="vision", d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads, image_size=s.image_size,
                    patch_size=s.patch_size, ffn="quick_gelu", embed_norm=True, final_norm=False, pool_norm=True,
                    patch_bias=False, family="clip_vision_model")
    text = Config(vocab_size=tokenizer.vocab_size, d_model=s.d_model, n_layers=s.text_layers, n_heads=s.n_heads,
                  max_seq_len=s.context, ffn="quick_gelu", tie_embeddings=False, family="clip_text",
                  eos_token_id=tokenizer.token_to_id("<|endoftext|>"), bos_token_id=tokenizer.token_to_id(SPECIALS[2]),
                  pad_token_id=0)
    sigmoid = s.loss == "sigmoid"
    cfg = CLIPConfig(vision=vision, text=text, projection_dim=s.projection_dim, loss=s.loss,
                     logit_scale_init=2.3 if sigmoid else 2.6592, family="clip")
    return CLIP(cfg)


def text_ids(model: CLIP, tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    t = model.config.text
    return pad_ids(encode_texts(tokenizer, texts, t.bos_token_id, t.eos_ids[0], t.max_seq_len), t.pad_token_id or 0)


@torch.no_grad()
def embed_texts(model: CLIP, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    ids, mask = text_ids(model, tokenizer, texts)
    return torch.nn.functional.normalize(model.get_text_features(ids, attention_mask=mask), dim=-1)


@torch.no_grad()
def embed_images(model: CLIP, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    feats = [model.get_image_features(pixels[i:i + batch]) for i in range(0, len(pixels), batch)]
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


def zero_shot(model: CLIP, tokenizer: Any, pixels: torch.Tensor, labels: Sequence[str],
              template: str | Sequence[str] = "a {}", ensemble: str = "mean") -> torch.Tensor:
    """Per image, the probabilities over ``labels`` from the prompts template.format(label) (Radford et al., 3.1.2).
    Several templates are an ensemble: ``mean`` averages each label's prompt embeddings (their 3.1.4); ``max`` scores
    a label by its best-matching prompt for that image (when the prompts describe different scenes, e.g. a count or
    a position the image may or may not show, the mean blurs them)."""
    templates = [template] if isinstance(template, str) else list(template)
    if ensemble not in ("mean", "max"):
        raise ValueError(f"ensemble={ensemble!r} must be mean or max")
    texts = torch.stack([embed_texts(model, tokenizer, [t.format(lab) for lab in labels]) for t in templates])
    images = embed_images(model, pixels)
    if ensemble == "mean":
        text = torch.nn.functional.normalize(texts.mean(0), dim=-1)  # [labels, P]
        return model.similarity(images, text).t().softmax(-1)  # [N, labels]
    scores = torch.stack([model.similarity(images, t).t() for t in texts])  # [templates, N, labels]
    return scores.amax(0).softmax(-1)


def recall_at(model: CLIP, tokenizer: Any, pixels: torch.Tensor, captions: Sequence[str], k: int = 1) -> float:
    """Text -> image retrieval: the share of captions for which one of the k best images of all is theirs, or one
    with the same caption (a synthetic set repeats captions: "two red circles" fits several images equally)."""
    scores = model.similarity(embed_images(model, pixels), embed_texts(model, tokenizer, captions))  # [N_txt, N_img]
    top = scores.topk(k, dim=-1).indices.tolist()
    return sum(any(captions[j] == captions[i] for j in row) for i, row in enumerate(top)) / len(captions)


def _load(settings: CLIPSettings) -> tuple[list, list[str], list, list[str], list[dict]]:
    """(train images, captions, test images, captions, test label records)."""
    if settings.data is None:
        tr = list(synthetic.scenes(settings.train_size, "train", seed=settings.seed))
        te = list(synthetic.scenes(settings.test_size, "test", seed=settings.seed))
        labels = [{"shape": s.shape, "colour": s.colour} for s in te]
        return [s.image for s in tr], [s.caption for s in tr], [s.image for s in te], [s.caption for s in te], labels
    root = Path(settings.data)
    found = {split: next((root / f"{split}{ext}" for ext in (".jsonl", ".csv") if (root / f"{split}{ext}").is_file()),
                         None) for split in ("train", "test")}
    for split, path in found.items():
        if path is None:
            raise ValueError(f"--data {root}: no {split}.jsonl or {split}.csv captions file")
    tr, te = read_captions(found["train"]), read_captions(found["test"])
    return [r.image for r in tr], [r.caption for r in tr], [r.image for r in te], [r.caption for r in te], []


def run(settings: CLIPSettings, log=print) -> dict[str, Any]:
    """Train, evaluate, write the folder and results.json; returns the results."""

    s = settings
    if s.loss not in ("softmax", "sigmoid"):
        raise ValueError(f"loss={s.loss!r} must be softmax or sigmoid")
    torch.manual_seed(s.seed)
    images, captions, test_images, test_captions, labels = _load(s)
    proc = ImageProcessor.for_size(s.image_size, mean=(0.48145466, 0.4578275, 0.40821073),
                                   std=(0.26862954, 0.26130258, 0.27577711))
    tok = Tokenizer.train(captions, s.vocab_size, special_tokens=SPECIALS, eos_token=SPECIALS[1], pad_token=SPECIALS[0])
    model = build(s, tok)
    t = model.config.text
    def ids(texts: list[str]) -> list[list[int]]:
        return encode_texts(tok, texts, t.bos_token_id, t.eos_ids[0], s.context)

    data = ImageTextData(process_all(images, proc), ids(captions), process_all(test_images, proc), ids(test_captions),
                         pad_id=0, seed=s.seed)
    args = TrainArgs(out_dir=s.out_dir, steps=s.steps, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr / 10,
                     warmup=s.warmup, weight_decay=0.1, eval_every=max(1, s.steps // 4), eval_batches=4,
                     save_every=s.steps, seed=s.seed, progress=s.progress, name="clip")
    summary = train(model, data, args, objective=ContrastiveObjective(), log=log)
    model.eval()
    results: dict[str, Any] = {"settings": asdict(s), "parameters": model.num_params(),
                               "train_seconds": round(summary["seconds"], 1), "val_loss": summary["val_loss"]}
    results["recall@1"] = recall_at(model, tok, data.val_pixels, test_captions, 1)
    results["recall@5"] = recall_at(model, tok, data.val_pixels, test_captions, 5)
    if labels:  # the synthetic set: zero-shot over the 24 colour-shape pairs, read per attribute too
        pairs = [f"{c} {sh}" for c in sorted(synthetic.COLOURS) for sh in synthetic.SHAPES]
        probs = zero_shot(model, tok, data.val_pixels, pairs, TEMPLATES, ensemble="max")
        pred = [pairs[i] for i in probs.argmax(-1).tolist()]
        truth = [f"{r['colour']} {r['shape']}" for r in labels]
        for name, part in (("pair", slice(0, 2)), ("colour", slice(0, 1)), ("shape", slice(1, 2))):
            hits = [p.split()[part] == g.split()[part] for p, g in zip(pred, truth, strict=True)]
            results[f"zero_shot_{name}"] = sum(hits) / len(hits)
        shapes = zero_shot(model, tok, data.val_pixels, synthetic.SHAPES).argmax(-1).tolist()
        results["zero_shot_shape_only_prompt"] = sum(synthetic.SHAPES[p] == r["shape"]
                                                     for p, r in zip(shapes, labels, strict=True)) / len(labels)
    return save_run(s.out_dir, model, tok, proc, results)


def save_run(out_dir: str, model: torch.nn.Module, tokenizer: Any, processor: ImageProcessor,
             results: dict[str, Any]) -> dict[str, Any]:
    """<out_dir>/model (the model, its tokenizer and image processor: a folder transformers reads) and
    <out_dir>/results.json; the results with the folder's path."""
    out = Path(out_dir) / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    atomic_write_text(Path(out_dir) / "results.json", json.dumps(results, indent=2) + "\n")
    return {**results, "folder": str(out)}
