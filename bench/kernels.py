"""The native kernels' products of one decode token of a GGUF file, by weight type: time, bytes read and GB/s,
against a read probe of 1 GiB measured in the same run (torch's sum over fp32; the model may sit in a large L3,
so the ratio is a figure, not a ceiling).

    python bench/kernels.py --gguf FILE.gguf [--threads 2] [--out docs/bench_kernels.md]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from report import command, emit

import groundup as gu
from groundup import kernels
from groundup.nn.gguf_linear import GGUFLinear


def best_of(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def read_probe() -> float:
    """GB/s of summing 1 GiB of fp32 (best of 5)."""
    big = torch.ones(2**28)
    return big.numel() * 4 / best_of(big.sum, 5) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("the native kernels are not available (see the warning)")
    model = gu.from_pretrained(args.gguf)
    groups = collections.defaultdict(list)
    for layer in model.modules():
        if isinstance(layer, GGUFLinear):
            groups[(layer.ggml_type, layer.out_features, layer.in_features)].append(layer)
    rows, total_t, total_b = [], 0.0, 0
    for (kind, n, k), layers in sorted(groups.items()):
        x = torch.randn(1, k)
        t = best_of(lambda layers=layers, x=x: [kernels.ggml_mm(x, m.blocks, m.type_id) for m in layers])
        nbytes = sum(m.blocks.numel() for m in layers)
        rows.append(f"| {kind} | {n} x {k} | {len(layers)} | {nbytes / 1e6:.1f} | {t * 1e3:.2f} | "
                    f"{nbytes / t / 1e9:.1f} |")
        total_t, total_b = total_t + t, total_b + nbytes
    probe = read_probe()
    lines = [f"Command: `{command()}`", "",
             f"`{Path(args.gguf).name}`: every product of one decode token (batch 1), grouped by weight type and "
             f"shape; {args.threads} threads, kernel variant {kernels.variant()}, torch {torch.__version__}. Best "
             "of 7.", "", "| type | out x in | layers | MB | ms | GB/s |", "|---|---|---:|---:|---:|---:|", *rows,
             f"| **all** | | {sum(len(v) for v in groups.values())} | {total_b / 1e6:.1f} | {total_t * 1e3:.2f} | "
             f"{total_b / total_t / 1e9:.1f} |", "",
             f"Read probe (sum of 1 GiB fp32, same run): {probe:.1f} GB/s; the products read at "
             f"{total_b / total_t / 1e9 / probe:.0%} of it."]
    emit("Native kernels: one decode token's products", lines, args.out)


if __name__ == "__main__":
    main()
