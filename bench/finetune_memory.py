"""Peak training memory of full fine-tuning (AdamW, 8-bit AdamW), LoRA (fp32 and bf16 base), QLoRA and the other
methods on the same model, measured.

    python bench/finetune_memory.py [--model DIR] [--steps 10] [--runs NAME ...] [--out docs/bench_finetune_memory.md]

Each method trains in its own `groundup finetune` process; its peak resident memory is read from the
operating system when it exits (os.wait4, in bench/report.py), so it counts everything the process held:
the interpreter, torch, the model, gradients, the optimizer's moments, activations. "weights" is the bytes of
the model's tensors (base and adapters) as trained. The data is a Goat-style arithmetic set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command, emit, finetune_child

from groundup.data.arithmetic import dataset

ALL = ["--target-modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUNS = {"full": [], "full, adamw8bit": ["--method", "full", "--optimizer", "adamw8bit"],
        "lora r=8 (q, v)": ["--method", "lora", "--r", "8"],
        "lora r=8 (all linear layers)": ["--method", "lora", "--r", "8", *ALL],
        "lora r=8 (all linear), bf16 base": ["--method", "lora", "--r", "8", *ALL, "--base-dtype", "bfloat16"],
        "qlora r=8 (all linear), nf4 + double quant": ["--method", "qlora", "--r", "8", *ALL],
        "qlora r=8 (all linear), fp32 products": ["--method", "qlora", "--r", "8", *ALL, "--compute-dtype",
                                                   "float32"],
        "ia3": ["--method", "ia3"], "prompt (20 tokens)": ["--method", "prompt"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="out/spec/target/checkpoint")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--work", default="out/finetune_memory")
    ap.add_argument("--runs", nargs="*", default=list(RUNS), help="which rows (default all; 'full' always runs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"--model {args.model}: no model folder (see bench/speculative.py for how to make the default)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dataset(500, seed=0, digits=3)))
    rows = []
    for name, extra in RUNS.items():
        if name != "full" and name not in args.runs:
            continue
        out = work / name.split()[0].strip(",")
        method = ["--method", "full"] if name == "full" else []
        s = finetune_child(args.model, str(data), str(out),
                           [*method, *extra, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                            "--eval-every", str(args.steps), "--save-every", str(args.steps)])
        rows.append((name, s["trainable"], s["total"], s["weights_mib"], s["child_peak_mb"], s["seconds"] / args.steps))
        print(rows[-1], flush=True)
    full_mb = rows[0][4]
    lines = [f"Command: `{command()}`", "",
             f"Model {args.model} ({rows[0][2]:,} parameters), batch {args.batch_size}, {args.steps} steps; "
             "weights: the bytes of the model's tensors as trained; peak memory: the resident memory of each training "
             "process (interpreter and torch included).", "",
             "| method | trainable parameters | % of total | weights MiB | peak memory MB | vs full | s / step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, n, total, wmb, mb, sec in rows:
        lines.append(f"| {name} | {n:,} | {100 * n / total:.2f}% | {wmb:,.1f} | {mb:,.0f} | {mb - full_mb:+,.0f} MB "
                     f"| {sec:.2f} |")
    emit("Fine-tuning memory: full, LoRA, QLoRA and the other methods on one model", lines, args.out)


if __name__ == "__main__":
    main()
