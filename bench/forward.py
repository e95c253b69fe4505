"""Prefill forward throughput: groundup vs transformers, same weights, same inputs, one process.

    python bench/forward.py [--seq-len 128] [--batch 1] [--repeats 9] [--out docs/bench_forward.md]

For each config (gpt2 124M, a 125M Llama-style GQA 12/4 model) and dtype (fp32, bf16), a random-init
transformers model is saved to a temporary folder and loaded with groundup.from_pretrained, so both run the
very same weights. Calls alternate between the two (warm-up first) and the median of the repeats is
reported, with the ratio and the fraction of this machine's matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import groundup as gu
from groundup import calc


def hf_model(name: str):
    import transformers as T

    if name == "gpt2":
        cfg = T.GPT2Config()
    else:  # the llama-125m preset, written as a transformers config
        c = gu.Config.preset("llama-125m")
        cfg = T.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                            num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                            intermediate_size=c.d_ff, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps)
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):  # oneDNN bf16 kernels need a few calls before they reach speed
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, dtype: torch.dtype, batch: int, seq_len: int, repeats: int, peak: float) -> dict:
    ref = hf_model(name).to(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = gu.from_pretrained(tmp, dtype=dtype)
    ids = torch.randint(0, ours.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (ours(ids).float() - ref(ids).logits.float()).abs().max().item()
        for _ in range(2):  # warm-up
            ours(ids)
            ref(ids)
        t_ours, t_ref = [], []
        for _ in range(repeats):
            t_ours.append(_timed(lambda: ours(ids)))
            t_ref.append(_timed(lambda: ref(ids)))
    n_tok = batch * seq_len
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    flops = calc.flops_per_token(ours.config, seq_len) * n_tok
    return dict(model=name, dtype=str(dtype).removeprefix("torch."), ours=n_tok / mo, ref=n_tok / mr, ratio=mr / mo,
                peak_frac=flops / mo / peak, diff=diff)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--models", default="gpt2,llama-125m")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out", default=None, help="write the markdown table here too")
    args = p.parse_args(argv)
    import transformers

    rows = []
    peaks = {}
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        peaks[dname] = matmul_peak(dtype)
        for name in args.models.split(","):
            rows.append(bench(name, dtype, args.batch, args.seq_len, args.repeats, peaks[dname]))
            r = rows[-1]
            print(f"{r['model']:<11} {r['dtype']:<9} groundup {r['ours']:8.0f} tok/s  transformers {r['ref']:8.0f} "
                  f"tok/s  ratio {r['ratio']:.2f}  ({r['peak_frac']:.0%} of matmul peak, max |dlogit| "
                  f"{r['diff']:.1e})", flush=True)
    cmd = "python bench/forward.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Prefill forward, batch {args.batch} x {args.seq_len} tokens, median of {args.repeats} alternating runs; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads. "
        "Matmul peak measured in the same run: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
        + ".",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        "| model | dtype | groundup tok/s | transformers tok/s | ratio | groundup % of matmul peak "
        "| max abs logit diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['model']} | {r['dtype']} | {r['ours']:,.0f} | {r['ref']:,.0f} | {r['ratio']:.2f} | "
              f"{r['peak_frac']:.0%} | {r['diff']:.1e} |" for r in rows]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
