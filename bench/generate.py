"""Decode speed: groundup.generate vs transformers' generate, same weights, same prompts, one process.

    python bench/generate.py [--repeats 3] [--new 32] [--prompt 128] [--only gpt2|llama] [--out docs/bench_generate.md]

Greedy decoding of `--new` tokens after a `--prompt`-token random prompt, for gpt2-124M and the
llama-125m preset (GQA 12/4) written as a transformers Llama, batch 1 and 8, fp32 and bf16 weights. The
generated tokens are checked to be identical first. Decode time is the time of a `--new`-token call minus
that of a 1-token call (which is the prefill plus one step), so decode tokens/s = batch x (new - 1) /
difference. The ceiling is the memory bandwidth measured in the same run divided by the bytes a step must
read: every weight the step uses (the input embedding table only through one row per token) plus the KV
cache at the mean decode length. Runs alternate; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from forward import hf_model
from report import alternate, command, emit

import groundup as gu
from groundup import calc


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of summing a large fp32 tensor (a read-only stream over memory), best of `repeats`."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.nbytes / best


def step_bytes(model: gu.CausalLM, batch: int, context: int, dtype: torch.dtype) -> float:
    """Bytes one decode step reads: the weights it multiplies by, and the KV cache of `context` positions."""
    size = torch.finfo(dtype).bits // 8
    params = {id(p): p for p in model.parameters()}
    used = sum(p.numel() for p in params.values())
    if not model.config.tie_embeddings:
        used -= model.embed.weight.numel()  # an untied input table is read one row per token
    if hasattr(model, "pos_embed"):
        used -= model.pos_embed.weight.numel()
    return used * size + calc.kv_cache_bytes(model.config, batch=batch, seq_len=context, dtype=dtype)


def bench(name: str, dtype: torch.dtype, batch: int, prompt: int, new: int, repeats: int, bandwidth: float) -> dict:
    ref = hf_model(name).to(dtype)
    ref.generation_config.eos_token_id = None  # random weights: always generate `new` tokens
    ref.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = gu.from_pretrained(tmp, dtype=dtype).eval()
    ids = torch.randint(0, ref.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def theirs(n: int):
        with torch.no_grad():
            return ref.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def mine(n: int):
        return gu.generate(ours, ids, n)

    same = torch.equal(mine(new), theirs(new))  # also the warm-up
    t_new = alternate(lambda: mine(new), lambda: theirs(new), repeats)
    t_one = alternate(lambda: mine(1), lambda: theirs(1), repeats)
    decode = [batch * (new - 1) / max(a - b, 1e-9) for a, b in zip(t_new, t_one, strict=True)]
    ceiling = batch * bandwidth / step_bytes(ours, batch, prompt + new // 2, dtype)
    return dict(model=name, dtype=str(dtype).removeprefix("torch."), batch=batch, ours=decode[0], ref=decode[1],
                ratio=decode[0] / decode[1], ceiling=ceiling, frac=decode[0] / ceiling,
                ref_frac=decode[1] / ceiling, prefill=t_one[1] / t_one[0], same=same)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--only", choices=("gpt2", "llama"), default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    bw = read_bandwidth()
    rows = []
    for name in [args.only] if args.only else ["gpt2", "llama"]:
        for dtype in (torch.float32, torch.bfloat16):
            for batch in args.batches:
                rows.append(bench(name, dtype, batch, args.prompt, args.new, args.repeats, bw))
                print(rows[-1], flush=True)
    import transformers

    lines = [f"Command: `{command()}`", "",
             f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
             f"read bandwidth in this run {bw / 1e9:.1f} GB/s. Greedy, {args.prompt}-token prompt, {args.new} new "
             "tokens; decode tokens/s over all rows; ceiling = bandwidth / bytes read per step.", "",
             "| model | dtype | batch | groundup tok/s | transformers tok/s | ratio | ceiling tok/s | groundup % "
             "| transformers % | prefill ratio | same tokens |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['ours']:,.1f} | {r['ref']:,.1f} | "
                     f"{r['ratio']:.2f} | {r['ceiling']:,.0f} | {100 * r['frac']:.0f}% | {100 * r['ref_frac']:.0f}% | "
                     f"{r['prefill']:.2f} | {'yes' if r['same'] else 'NO'} |")
    emit("Decode benchmark", lines, args.out)


if __name__ == "__main__":
    main()
