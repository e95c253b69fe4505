"""Flamingo's recipe at toy size: the language model trained on text and then frozen, the vision tower (a CLIP
folder's) frozen, and only the perceiver resampler and the gated cross-attention layers trained, on the synthetic
questions; then held-out exact match, and the few-shot behaviour: k solved examples (image, question, answer)
interleaved before the query, each text token seeing only its latest image (Alayrac et al., 2022, 2.3).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models.flamingo import Flamingo
from ..multimodal import FlamingoConfig
from ..utils.files import atomic_write_text
from ..vision import ImageProcessor, synthetic
from ..vision.data import VisionTextData, process_all
from .llava import DESCRIBE, SPECIALS, AnswerObjective, prompt, runner_generate
from .loop import TrainArgs, train


@dataclass
class FlamingoSettings:
    out_dir: str = "out/flamingo"
    clip: str = "out/clip/model"
    train_size: int = 3000
    test_size: int = 300
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 400
    n_latents: int = 8
    resampler_layers: int = 1
    cross_every: int = 1
    lm_steps: int = 300
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    shots: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    progress: bool = True


def _examples(tok, scenes_, kind: str) -> list[tuple[list[int], list[int]]]:
    """(ids, answer mask): one <image> token per scene (Flamingo keeps one marker per image)."""
    eos = tok.token_to_id("</s>")
    out = []
    for i, s in enumerate(scenes_):
        if kind == "caption":
            q, a = DESCRIBE, s.caption
        else:
            k = ("colour", "shape", "count")[i % 3]
            q, a = synthetic.QUESTIONS[k], s.answer(k)
        p = tok.encode(prompt(q), allowed_special={"<image>"})
        ans = [*tok.encode(" " + a), eos]
        out.append((p + ans, [0] * len(p) + [1] * len(ans)))
    return out


@torch.no_grad()
def few_shot(model: Flamingo, tok, queries, query_px: torch.Tensor, support, support_px: torch.Tensor, shots: int,
             batch: int = 50) -> dict[str, float]:
    """Exact match when ``shots`` solved examples (the support scenes i+1.., same question) precede each query."""
    eos = tok.token_to_id("</s>")
    hits: dict[str, list[bool]] = {k: [] for k in synthetic.QUESTIONS}
    n_sup = len(support)
    for kind, question in synthetic.QUESTIONS.items():
        for b in range(0, len(queries), batch):
            rows, pixels = [], []
            for i in range(b, min(b + batch, len(queries))):
                picks = [(i * 7 + j * 13) % n_sup for j in range(shots)]  # fixed, different per query
                text = "".join(f"{prompt(question)} {support[p].answer(kind)}\n" for p in picks) + prompt(question)
                rows.append(tok.encode(text, allowed_special={"<image>"}))
                pixels.append(torch.cat([support_px[picks], query_px[i:i + 1]]) if shots else query_px[i:i + 1])
            out = runner_generate(model.with_images(torch.stack(pixels)), rows, eos)
            for i, row in zip(range(b, b + len(rows)), out, strict=True):
                hits[kind].append(tok.decode([t for t in row if t != eos]).strip() == queries[i].answer(kind))
    scores = {k: sum(v) / len(v) for k, v in hits.items()}
    scores["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return scores


def run(settings: FlamingoSettings, log=print) -> dict[str, Any]:
    from ..checkpoint.hf import from_pretrained
    from ..tokenizer import Tokenizer

    s = settings
    torch.manual_seed(s.seed)
    clip = from_pretrained(s.clip)
    proc = ImageProcessor.from_pretrained(s.clip)
    train_scenes = list(synthetic.scenes(s.train_size, "train", seed=s.seed))
    test_scenes = list(synthetic.scenes(s.test_size, "test", seed=s.seed))
    pairs = [(DESCRIBE, sc.caption) for sc in train_scenes]
    pairs += [(synthetic.QUESTIONS[k], sc.answer(k)) for sc in train_scenes for k in synthetic.QUESTIONS]
    tok = Tokenizer.train([prompt(q) + " " + a for q, a in pairs], s.vocab_size, special_tokens=SPECIALS,
                          eos_token="</s>", pad_token="<pad>")
    text = Config(vocab_size=tok.vocab_size, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads, pos="rope",
                  norm="rmsnorm", ffn="swiglu", attn_bias=False, attn_out_bias=False, mlp_bias=False,
                  tie_embeddings=False, max_seq_len=256, family="llama", eos_token_id=tok.token_to_id("</s>"),
                  pad_token_id=0)
    v = clip.config.vision
    resampler = Config(arch="encoder", d_model=v.d_model, n_layers=s.resampler_layers, n_heads=v.n_heads,
                       d_ff=4 * v.d_model, ffn="relu", attn_bias=False, attn_out_bias=False, mlp_bias=False, pos="none")
    vision = v.replace(family="idefics_vision")
    cfg = FlamingoConfig(vision=vision, text=text, resampler=resampler, n_latents=s.n_latents,
                         cross_every=s.cross_every, image_token_id=tok.token_to_id("<image>"))
    model = Flamingo(cfg)
    model.vision_tower.load_state_dict(clip.vision.state_dict())
    px = process_all([sc.image for sc in train_scenes], proc)
    test_px = process_all([sc.image for sc in test_scenes], proc)
    results: dict[str, Any] = {"settings": asdict(s), "image_tokens": cfg.image_tokens}

    def stage(name: str, steps: int, data: VisionTextData, trainable: list[torch.nn.Module]) -> None:
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

    qa, qa_test = _examples(tok, train_scenes, "qa"), _examples(tok, test_scenes, "qa")
    text_only = VisionTextData(None, qa + _examples(tok, train_scenes, "caption"), None, qa_test, pad_id=0, seed=s.seed)
    stage("lm", s.lm_steps, text_only, [model.language_model])  # then frozen for good
    frozen = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    model.eval()
    results["lm_alone"] = few_shot(model, tok, test_scenes, torch.zeros_like(test_px), train_scenes, px, 0)
    stage("gated", s.steps, VisionTextData(px, qa, test_px, qa_test, pad_id=0, seed=s.seed), model.new_layers())
    model.eval()
    results["lm_unchanged"] = all(torch.equal(frozen[k], v) for k, v in model.language_model.state_dict().items())
    results["gates"] = [round(float(torch.tanh(g.alpha_attn.detach()).abs().mean()), 3) for g in model.gated]
    for k in s.shots:
        results[f"{k}_shot"] = few_shot(model, tok, test_scenes, test_px, train_scenes, px, k)
    out = Path(s.out_dir) / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    atomic_write_text(Path(s.out_dir) / "results.json", json.dumps(results, indent=2) + "\n")
    results["folder"] = str(out)
    return results
