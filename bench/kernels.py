"""The native kernels' product calls of one decode token of a GGUF file, by call: time, bytes read and GB/s,
against a read probe of 1 GiB measured in the same run (torch's sum over fp32; the model may sit in a large L3,
so the ratio is a figure, not a ceiling).

    python bench/kernels.py --gguf FILE.gguf [--threads 2] [--memory] [--out docs/bench_kernels.md]

--memory: peak resident memory (VmHWM) of fresh processes that load the file (its blocks kept) or its fp32
decoding saved as a folder and decode 64 tokens after a 128-token prompt, each against a process that only
imports torch and groundup and loads the kernels: what decoding the model itself needs.
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
from quant import peak_mib
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


def decode_calls(model) -> list[tuple[str, tuple[GGUFLinear, ...]]]:
    """The product calls of one decode token, as the layers make them: q/k/v and gate/up one call each
    (nn.gguf_linear.project), the others alone, then the head."""
    calls = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        groups = [("q/k/v", (attn.q_proj, attn.k_proj, attn.v_proj)), ("o", (attn.o_proj,)),
                  ("gate/up", (getattr(mlp, "gate_proj", None), mlp.up_proj)), ("down", (mlp.down_proj,))]
        for label, layers in groups:
            layers = tuple(m for m in layers if m is not None)
            if all(isinstance(m, GGUFLinear) for m in layers):
                calls.append((label, layers))
    if isinstance(model.lm_head, GGUFLinear):
        calls.append(("head", (model.lm_head,)))
    return calls


def product(x: torch.Tensor, layers: tuple[GGUFLinear, ...]) -> list[torch.Tensor]:
    if len(layers) == 1:
        return [kernels.ggml_mm(x, layers[0].blocks, layers[0].type_id)]
    return kernels.ggml_mm_many(x, [m.blocks for m in layers], [m.type_id for m in layers])


def memory(path: Path, threads: int) -> list[str]:
    """Rows: peak RSS over the import baseline, decoding the file's blocks and its fp32 decoding
    (bench/quant.py's child process)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        gu.from_pretrained(path, dequantize=True).save_pretrained(Path(tmp) / "fp32")
        base, blocks, fp32 = (peak_mib(p, 64, threads) for p in ("", str(path), str(Path(tmp) / "fp32")))
    size = path.stat().st_size / 2**20
    return ["", f"Peak resident memory (VmHWM, MiB) of a fresh process decoding 64 tokens, over one that only imports "
            f"torch and groundup and loads the kernels ({base:,.0f} MiB); the file is {size:,.0f} MiB:", "",
            "| model | peak MiB | over the import | vs fp32 |", "|---|---:|---:|---:|",
            f"| the file's blocks | {blocks:,.0f} | {blocks - base:,.0f} | {(blocks - base) / (fp32 - base):.2f} |",
            f"| its fp32 decoding (safetensors folder) | {fp32:,.0f} | {fp32 - base:,.0f} | 1.00 |"]


def read_probe() -> float:
    """GB/s of summing 1 GiB of fp32 (best of 5)."""
    big = torch.ones(2**28)
    return big.numel() * 4 / best_of(big.sum, 5) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--memory", action="store_true", help="also peak RSS of decoding the file and its fp32 decoding")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("the native kernels are not available (see the warning)")
    model = gu.from_pretrained(args.gguf)
    groups = collections.defaultdict(list)
    for label, layers in decode_calls(model):
        key = (label, "+".join(m.ggml_type for m in layers), "+".join(str(m.out_features) for m in layers),
               layers[0].in_features)
        groups[key].append(layers)
    rows, total_t, total_b = [], 0.0, 0
    for (label, kind, n, k), calls in groups.items():
        x = torch.randn(1, k)
        t = best_of(lambda calls=calls, x=x: [product(x, layers) for layers in calls])
        nbytes = sum(m.blocks.numel() for layers in calls for m in layers)
        rows.append(f"| {label} | {kind} | {n} x {k} | {len(calls)} | {nbytes / 1e6:.1f} | {t * 1e3:.2f} | "
                    f"{nbytes / t / 1e9:.1f} |")
        total_t, total_b = total_t + t, total_b + nbytes
    probe = read_probe()
    lines = [f"Command: `{command()}`", "",
             f"`{Path(args.gguf).name}`: every product call of one decode token (batch 1; q/k/v and gate/up one "
             f"call each, from one quantized input), grouped by weight types and shapes; {args.threads} threads, "
             f"kernel variant {kernels.variant()}, torch {torch.__version__}. Best of 7.", "",
             "| call | types | out x in | calls | MB | ms | GB/s |", "|---|---|---|---:|---:|---:|---:|", *rows,
             f"| **all** | | | {sum(len(v) for v in groups.values())} | {total_b / 1e6:.1f} | {total_t * 1e3:.2f} | "
             f"{total_b / total_t / 1e9:.1f} |", "",
             f"Read probe (sum of 1 GiB fp32, same run): {probe:.1f} GB/s; the products read at "
             f"{total_b / total_t / 1e9 / probe:.0%} of it."]
    if args.memory:
        lines += memory(Path(args.gguf), args.threads)
    emit("Native kernels: one decode token's products", lines, args.out)


if __name__ == "__main__":
    main()
