"""Calibrated 4-bit quantization on a trained model: perplexity of round-to-nearest int4, NF4, GPTQ and AWQ at
the same bits and group, against the float model, with the time each method took, one process.

    python bench/calibrated.py --model FOLDER|FILE.gguf --calib FILE ... --text FILE [--group 64]
                               [--samples 128] [--seqlen 512] [--windows 32] [--out docs/bench_calibrated.md]

The calibration text and the held-out text must differ (the calibration windows are drawn from --calib, the
perplexity is measured on non-overlapping --seqlen windows of --text). Every variant starts from the same
float model (its checkpoint values in fp32; NF4's products in fp32 too); perplexity is exp of the mean
next-token loss over the held-out windows; KL is the mean KL(float || variant) of the next-token
distributions per token. GPTQ and AWQ times include their calibration forward passes.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from report import command, emit

import groundup as gu
from groundup.quant import quantize
from groundup.quant.awq import quantize_awq
from groundup.quant.calibrate import calibration_ids
from groundup.quant.gptq import quantize_gptq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", nargs="+", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--skip", nargs="*", default=[], help="variants to leave out (e.g. 'awq')")
    ap.add_argument("--only", nargs="*", default=None, help="run only the variants with these exact names (the float "
                    "reference always runs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tok = gu.Tokenizer.from_file(args.model)
    calib = calibration_ids(args.calib, tok, samples=args.samples, seqlen=args.seqlen)
    held = calibration_ids([args.text], tok, samples=args.windows, seqlen=args.seqlen, seed=1)
    # fp32 holds a 16-bit checkpoint's values exactly and runs several times faster than bf16 on CPUs without
    # bf16 arithmetic; the quantized layers pick their own product by measurement
    base = gu.from_pretrained(args.model, dtype=torch.float32, dequantize=True).eval()
    g = args.group

    def evaluate(model: gu.CausalLM) -> tuple[float, torch.Tensor]:
        nll, logps = 0.0, []
        with torch.no_grad():
            for j in range(held.shape[0]):
                logp = model(held[j:j + 1]).float().log_softmax(-1)  # [1, T, V]
                nll += float(-logp[:, :-1].gather(-1, held[j:j + 1, 1:, None]).mean())
                logps.append(logp[:, :-1].to(torch.bfloat16))
        return math.exp(nll / held.shape[0]), torch.cat(logps)

    variants = {
        "float": lambda m: m,
        f"RTN int4 g{g}": lambda m: quantize(m, "int4", group_size=g, indivisible="int8"),
        "NF4 (blocks of 64, double quant)": lambda m: quantize(m, "nf4", compute_dtype=torch.float32),
        f"GPTQ int4 g{g}": lambda m: quantize_gptq(m, calib, group_size=g),
        f"GPTQ int4 g{g} act-order": lambda m: quantize_gptq(m, calib, group_size=g, act_order=True),
        f"AWQ int4 g{g}": lambda m: quantize_awq(m, calib, group_size=g),
    }
    rows, ref = [], None
    for name, make in variants.items():
        if any(s.lower() in name.lower() for s in args.skip):
            continue
        if args.only is not None and name != "float" and name not in args.only:
            continue
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        make(model)
        seconds = time.perf_counter() - t0
        ppl, logp = evaluate(model)
        if ref is None:
            ref = logp
        kl = float(F.kl_div(logp.float(), ref.float(), log_target=True, reduction="none").sum(-1).mean())
        rows.append((name, ppl, kl, seconds))
        print(rows[-1], flush=True)
        del model
    float_ppl = rows[0][1]
    lines = [f"Command: `{command()}`", "",
             f"Model {args.model} ({base.num_params():,} parameters); calibration: {args.samples} windows of "
             f"{args.seqlen} tokens from {', '.join(Path(c).name for c in args.calib)}; held out: {held.shape[0]} "
             f"windows of {args.seqlen} tokens of {Path(args.text).name} ({held.numel():,} tokens).", "",
             f"{torch.get_num_threads()} threads.", "",
             "| variant | perplexity | vs float | KL(float \\|\\| variant) / token | quantize time s |",
             "|---|---:|---:|---:|---:|"]
    for name, ppl, kl, seconds in rows:
        lines.append(f"| {name} | {ppl:.3f} | {100 * (ppl / float_ppl - 1):+.2f}% | {kl:.4f} | {seconds:.1f} |")
    emit("Calibrated 4-bit quantization: RTN, NF4, GPTQ and AWQ on one trained model", lines, args.out)


if __name__ == "__main__":
    main()
