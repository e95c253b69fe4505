"""Encoder and encoder-decoder speed: groundup vs transformers, same weights, same inputs, one process.

    python bench/encdec.py [--repeats 5] [--out docs/bench_encdec.md]

Rows: BERT-base MLM forward (batch 8 x 128 tokens, fp32, with padding), and T5-small decoding of 32 new
tokens from a 64-token source, greedy and beam search (4 beams), each with its KV cache. Random-init
transformers models are saved to a temporary folder and loaded with groundup.from_pretrained; calls
alternate between the two after a warm-up and the median is reported with the ratio (>1: groundup faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from report import alternate

import groundup as gu


def _median_pair(fa, fb, repeats: int) -> tuple[float, float]:
    fa(), fb()  # warm-up
    return alternate(fa, fb, repeats)


def _load(ref: torch.nn.Module):
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        return gu.from_pretrained(tmp)


def bench_bert(repeats: int) -> list[tuple[str, float, float]]:
    import transformers as T

    torch.manual_seed(0)
    ref = T.BertForMaskedLM(T.BertConfig(attn_implementation="sdpa")).eval()
    model = _load(ref)
    ids = torch.randint(1000, 30000, (8, 128))
    mask = torch.ones_like(ids)
    mask[::2, 96:] = 0
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, attention_mask=mask)[mask.bool()],
                                   ref(input_ids=ids, attention_mask=mask).logits[mask.bool()], atol=1e-3, rtol=0)
        g, h = _median_pair(lambda: model(ids, attention_mask=mask),
                            lambda: ref(input_ids=ids, attention_mask=mask), repeats)
    return [("bert-base MLM forward, 8 x 128, fp32", g, h)]


def bench_t5(repeats: int) -> list[tuple[str, float, float]]:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)
    ref = T.T5ForConditionalGeneration(cfg).eval()
    model = _load(ref)
    src = torch.randint(3, 32000, (1, 64))
    rows = []
    with torch.inference_mode():
        for beams in (1, 4):
            kw = dict(max_new_tokens=32, num_beams=beams)
            ours = model.generate(src, **kw)
            theirs = ref.generate(src, do_sample=False, **kw)
            same = ours.shape == theirs.shape and bool((ours == theirs).all())
            g, h = _median_pair(lambda kw=kw: model.generate(src, **kw),
                                lambda kw=kw: ref.generate(src, do_sample=False, **kw), repeats)
            label = "greedy" if beams == 1 else f"beam search ({beams} beams)"
            rows.append((f"t5-small {label}, 64 -> 32 tokens{'' if same else ' (outputs differ!)'}", g, h))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = bench_bert(args.repeats) + bench_t5(args.repeats)
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}",
             "", "| workload | groundup (ms) | transformers (ms) | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {g * 1e3:.1f} | {h * 1e3:.1f} | {h / g:.2f}x |" for name, g, h in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        cmd = "python " + " ".join(sys.argv)
        args.out.write_text(f"# Encoder and encoder-decoder speed\n\nMade with `{cmd}`.\n\n{text}\n")


if __name__ == "__main__":
    main()
