"""Flamingo's recipe at toy size: the language model trained on text and then frozen, the vision tower (a CLIP
folder's) frozen, and only the perceiver resampler and the gated cross-attention layers trained, on the synthetic
questions; then held-out exact match, and the few-shot behaviour: k solved examples (image, question, answer)
interleaved before the query, each text token seeing only its latest image (Alayrac et al., 2022, 2.3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import Config
from ..generate.entry import continuations
from ..models.flamingo import Flamingo
from ..multimodal import FlamingoConfig
from ..vision import synthetic
from ..vision.data import VisionTextData
from .clip import save_run
from .llava import DESCRIBE, Setup, VLMSettings, prompt, train_stage


@dataclass
class FlamingoSettings(VLMSettings):
    out_dir: str = "out/flamingo"
    n_latents: int = 8
    resampler_layers: int = 1
    cross_every: int = 1
    steps: int = 1000  # the resampler and gated layers, the LM frozen
    shots: tuple[int, ...] = (0, 1, 2)


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
            out = continuations(model.with_images(torch.stack(pixels)), rows, 4, eos=eos, batch=len(rows))
            for i, row in zip(range(b, b + len(rows)), out, strict=True):
                hits[kind].append(tok.decode(row).strip() == queries[i].answer(kind))
    scores = {k: sum(v) / len(v) for k, v in hits.items()}
    scores["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return scores


def run(settings: FlamingoSettings, log=print) -> dict[str, Any]:
    s = settings
    setup = Setup(s, max_seq_len=256)
    clip, proc, tok, text = setup.clip, setup.processor, setup.tokenizer, setup.text
    train_scenes, test_scenes, px, test_px = setup.train_scenes, setup.test_scenes, setup.pixels, setup.test_pixels
    v = clip.config.vision
    resampler = Config(arch="encoder", d_model=v.d_model, n_layers=s.resampler_layers, n_heads=v.n_heads,
                       d_ff=4 * v.d_model, ffn="relu", attn_bias=False, attn_out_bias=False, mlp_bias=False, pos="none")
    vision = v.replace(family="idefics_vision")
    cfg = FlamingoConfig(vision=vision, text=text, resampler=resampler, n_latents=s.n_latents,
                         cross_every=s.cross_every, image_token_id=tok.token_to_id("<image>"))
    model = Flamingo(cfg)
    model.vision_tower.load_state_dict(clip.vision.state_dict())
    results: dict[str, Any] = {"settings": asdict(s), "image_tokens": cfg.image_tokens}

    def stage(name: str, steps: int, data: VisionTextData, trainable: list[torch.nn.Module]) -> None:
        train_stage(model, name, steps, data, trainable, s, results, log)

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
    return save_run(s.out_dir, model, tok, proc, results)
