"""LLaVA's recipe at toy size on the one loop: a vision tower (a CLIP folder's, frozen), a projector and a small
language model, trained in stages on the synthetic shapes set, then asked held-out questions.

    stage 0  the language model alone on the captions' and conversations' text, images removed: it learns the
             language and the answers' priors, and is the baseline that cannot see (chance on colour, shape, count)
    stage 1  projector only (LM and tower frozen), on captions: "USER: <image>\\nDescribe the picture.
             ASSISTANT: a red circle on the left" (LLaVA's feature alignment, Liu et al., 2023, 4.2)
    stage 2  projector + LM (tower frozen) on the questions, loss on the answers only (their instruction tuning)

Prompts follow LLaVA-1.5's conversation format; each ``<image>`` is one special token, expanded to the tower's
``image_tokens`` placeholders. The result is a transformers LLaVA folder (LlavaForConditionalGeneration reads it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.hf import from_pretrained
from ..config import Config
from ..generate.entry import continuations
from ..models.vlm import Llava
from ..multimodal import LlavaConfig
from ..tokenizer import Tokenizer
from ..vision import ImageProcessor, synthetic
from ..vision.data import VisionTextData, process_all
from .clip import save_run
from .loop import TrainArgs, train
from .objective import TrainObjective

SPECIALS = ("<pad>", "</s>", "<image>")
DESCRIBE = "Describe the picture."


def prompt(question: str, image: bool = True) -> str:
    """LLaVA-1.5's single-turn prompt."""
    return f"USER: {'<image>' + chr(10) if image else ''}{question} ASSISTANT:"


@dataclass
class VLMSettings:
    """What the LLaVA and Flamingo runs share: the CLIP folder, the synthetic set's sizes, the LM and the loop."""

    out_dir: str = "out/vlm"
    clip: str = "out/clip/model"  # a CLIP folder whose vision tower is used (groundup clip train writes one)
    train_size: int = 3000
    test_size: int = 300
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 400
    lm_steps: int = 300  # the language model alone on the text
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    progress: bool = True


@dataclass
class LlavaSettings(VLMSettings):
    out_dir: str = "out/llava"
    vision_feature_layer: int = -1
    align_steps: int = 300
    tune_steps: int = 1000


class AnswerObjective(TrainObjective):
    """Cross-entropy on the answer tokens (targets -100 elsewhere), images in the input when the batch has them."""

    def loss(self, model, batch, index: int, reduction: str = "mean", rows=None) -> tuple[torch.Tensor, int]:
        n = int((batch.targets != -100).sum())
        out = model(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask, targets=batch.targets,
                    reduction=reduction)
        return out, n


def render_conversation(tok, turns: list[dict[str, str]], *, image: bool = True) -> tuple[list[int], list[int]]:
    """LLaVA's conversation records ([{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...])
    in LLaVA-1.5's format, "USER: <image>\\nQ ASSISTANT: A</s>USER: ...", as (ids, answer mask): only the model's
    turns (and their end-of-text token) are trained on. ``image=False`` drops the placeholder (the text-only LM)."""
    eos = tok.token_to_id("</s>")
    ids: list[int] = []
    answer: list[int] = []
    for n, turn in enumerate(turns):
        who, value = turn.get("from"), turn.get("value")
        if who not in ("human", "gpt") or not isinstance(value, str):
            raise ValueError(f"turn {n}: needs from='human' or 'gpt' and a string value, got {turn!r}")
        if who == "human":
            text = value if image else value.replace("<image>\n", "").replace("<image>", "")
            part = tok.encode(f"USER: {text} ASSISTANT:", allowed_special={"<image>"})
            mark = 0
        else:
            part, mark = [*tok.encode(" " + value), eos], 1
        ids += part
        answer += [mark] * len(part)
    if not any(answer):
        raise ValueError("the conversation has no gpt turn to train on")
    return ids, answer


def _examples(tok, llava_expand, scenes_, kind: str, image: bool) -> list[tuple[list[int], list[int]]]:
    """(ids, answer mask) per scene: the caption (kind "caption") or the question of scene i % 3, as a LLaVA
    conversation, the image placeholder expanded to the visual tokens."""
    out = []
    for i, s in enumerate(scenes_):
        if kind == "caption":
            turns = [{"from": "human", "value": f"<image>\n{DESCRIBE}"}, {"from": "gpt", "value": s.caption}]
        else:  # the three question kinds in turn
            turns = s.conversation(("colour", "shape", "count")[i % 3])
        ids, answer = render_conversation(tok, turns, image=image)
        if image:  # each placeholder becomes image_tokens of them, none of them an answer, wherever it stands
            pieces = [(llava_expand([t]), [m] * len(llava_expand([t]))) for t, m in zip(ids, answer, strict=True)]
            ids, answer = [t for p, _ in pieces for t in p], [m for _, ms in pieces for m in ms]
        out.append((ids, answer))
    return out


@torch.no_grad()
def exact_match(model: Llava, tok, scenes_, pixels: torch.Tensor | None, batch: int = 50) -> dict[str, float]:
    """Greedy answers to each held-out scene's three questions, scored by exact match per question kind."""
    eos = tok.token_to_id("</s>")
    hits: dict[str, list[bool]] = {k: [] for k in synthetic.QUESTIONS}
    for kind, question in synthetic.QUESTIONS.items():
        for b in range(0, len(scenes_), batch):
            chunk = scenes_[b:b + batch]
            image = pixels is not None
            ids = [tok.encode(prompt(question, image), allowed_special={"<image>"}) for _ in chunk]
            ids = [model.expand_image_tokens(x) for x in ids] if image else ids
            runner = model.with_images(pixels[b:b + batch]) if image else model.language_model
            out = continuations(runner, ids, 4, eos=eos, batch=len(ids))
            for s, row in zip(chunk, out, strict=True):
                text = tok.decode(row).strip()
                hits[kind].append(text == s.answer(kind))
    scores = {k: sum(v) / len(v) for k, v in hits.items()}
    scores["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return scores


def train_stage(model: torch.nn.Module, name: str, steps: int, data: VisionTextData, trainable: list[torch.nn.Module],
                settings: Any, results: dict[str, Any], log=print) -> None:
    """One stage on the loop: only ``trainable`` gets gradients; its seconds, validation loss and trained
    parameter count go into ``results`` under the stage's name (<out_dir>/<name> holds its run)."""
    s = settings
    model.requires_grad_(False)
    for m in trainable:
        m.requires_grad_(True)
    args = TrainArgs(out_dir=str(Path(s.out_dir) / name), steps=steps, batch_size=s.batch_size, lr=s.lr,
                     min_lr=s.lr / 10, warmup=min(50, steps // 5), eval_every=max(1, steps // 2), eval_batches=4,
                     save_every=steps, seed=s.seed, progress=s.progress, name=name)
    summary = train(model, data, args, objective=AnswerObjective(), log=log)
    results[f"{name}_seconds"] = round(summary["seconds"], 1)
    results[f"{name}_val_loss"] = summary["val_loss"]
    results[f"{name}_trained_parameters"] = sum(p.numel() for m in trainable for p in m.parameters())


class Setup:
    """What the LLaVA and Flamingo runs share: the CLIP folder's tower and processor, the synthetic scenes and their
    pixels, a BPE tokenizer trained on the prompts (with <image> and </s>) and the small Llama-style LM's Config."""

    def __init__(self, s: Any, *, max_seq_len: int) -> None:
        torch.manual_seed(s.seed)
        self.clip = from_pretrained(s.clip)
        self.processor = ImageProcessor.from_pretrained(s.clip)
        self.train_scenes = list(synthetic.scenes(s.train_size, "train", seed=s.seed))
        self.test_scenes = list(synthetic.scenes(s.test_size, "test", seed=s.seed))
        pairs = [(DESCRIBE, sc.caption) for sc in self.train_scenes]
        pairs += [(synthetic.QUESTIONS[k], sc.answer(k)) for sc in self.train_scenes for k in synthetic.QUESTIONS]
        self.tokenizer = tok = Tokenizer.train([prompt(q) + " " + a for q, a in pairs], s.vocab_size,
                                               special_tokens=SPECIALS, eos_token="</s>", pad_token="<pad>")
        self.text = Config(vocab_size=tok.vocab_size, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads,
                           pos="rope", norm="rmsnorm", ffn="swiglu", attn_bias=False, attn_out_bias=False,
                           mlp_bias=False, tie_embeddings=False, max_seq_len=max_seq_len, family="llama",
                           eos_token_id=tok.token_to_id("</s>"), pad_token_id=0)
        self.pixels = process_all([sc.image for sc in self.train_scenes], self.processor)
        self.test_pixels = process_all([sc.image for sc in self.test_scenes], self.processor)


def run(settings: LlavaSettings, log=print) -> dict[str, Any]:
    s = settings
    setup = Setup(s, max_seq_len=128)
    clip, proc, tok, text = setup.clip, setup.processor, setup.tokenizer, setup.text
    train_scenes, test_scenes, px, test_px = setup.train_scenes, setup.test_scenes, setup.pixels, setup.test_pixels
    cfg = LlavaConfig(vision=clip.config.vision, text=text, image_token_id=tok.token_to_id("<image>"),
                      vision_feature_layer=s.vision_feature_layer)
    model = Llava(cfg)
    model.vision_tower.load_state_dict(clip.vision.state_dict())
    model.vision_tower.requires_grad_(False)
    results: dict[str, Any] = {"settings": asdict(s), "image_tokens": cfg.image_tokens}

    def stage(name: str, steps: int, data: VisionTextData, trainable: list[torch.nn.Module]) -> None:
        train_stage(model, name, steps, data, trainable, s, results, log)

    expand = model.expand_image_tokens
    text_only = [*_examples(tok, expand, train_scenes, "qa", False),
                 *_examples(tok, expand, train_scenes, "caption", False)]
    qa_text = VisionTextData(None, text_only, None, _examples(tok, expand, test_scenes, "qa", False), pad_id=0,
                             seed=s.seed)
    stage("lm", s.lm_steps, qa_text, [model.language_model])
    model.eval()
    results["lm_alone"] = exact_match(model, tok, test_scenes, None)
    captions = VisionTextData(px, _examples(tok, expand, train_scenes, "caption", True), test_px,
                              _examples(tok, expand, test_scenes, "caption", True), pad_id=0, seed=s.seed)
    stage("align", s.align_steps, captions, [model.projector])
    qa = VisionTextData(px, _examples(tok, expand, train_scenes, "qa", True), test_px,
                        _examples(tok, expand, test_scenes, "qa", True), pad_id=0, seed=s.seed)
    stage("tune", s.tune_steps, qa, [model.projector, model.language_model])
    model.eval()
    results["with_image"] = exact_match(model, tok, test_scenes, test_px)
    return save_run(s.out_dir, model, tok, proc, results)
