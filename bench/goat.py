"""The course's Goat experiment in small: fine-tuning methods against few-shot prompting on arithmetic.

    python bench/goat.py [--model out/run/checkpoint] [--steps 300] [--train 3000] [--test 200] [--out docs/goat.md]

Writes Goat-style train and held-out test sets (data/arithmetic.py; no test prompt is in the training
set), fine-tunes the same frozen base with each method through `groundup finetune` (one process per
method, so its peak resident memory is its own, read from the operating system when it exits), then
scores exact match of the final answer on the test set with greedy decoding, next to the base model
prompted with k solved examples and no weight update. Prints and writes one table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command, emit, finetune_child

from groundup.cli.arithmetic import report, table, write_data

METHODS = {"full": [], "lora": ["--r", "8", "--alpha", "16", "--target-modules", "q_proj", "k_proj", "v_proj",
                                "o_proj", "gate_proj", "up_proj", "down_proj"],
           "ia3": [], "prompt": ["--num-virtual-tokens", "20"], "prefix": ["--num-virtual-tokens", "10"]}


def run_method(method: str, args, work: Path) -> dict:
    """`groundup finetune` in a child process; its summary plus the child's peak RSS (MB). With --reuse and a
    finished run in the folder, that run's summary (whose peak_rss_mb the child measured itself)."""
    out = work / method
    if args.reuse and (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
        return {**summary, "child_peak_mb": summary["peak_rss_mb"], "out": str(out)}
    extra = ["--method", method, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--val-fraction", "0.02", "--eval-every", str(args.steps), "--save-every", str(args.steps),
             "--lr", str(args.lr[method]), *METHODS[method]]
    return finetune_child(args.model, str(work / "train.jsonl"), str(out), extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="out/run/checkpoint")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--digits", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["add", "sub", "mul", "div"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--work", default="out/goat")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reuse", action="store_true", help="score runs already in --work instead of training again")
    ap.add_argument("--lr", nargs="+", default=[], metavar="METHOD=LR", help="learning rates to change, e.g. lora=1e-2")
    args = ap.parse_args()
    lrs = {"full": 1e-3, "lora": 3e-3, "ia3": 1e-2, "prompt": 3e-2, "prefix": 1e-2}
    for item in args.lr:
        method, _, value = item.partition("=")
        if method not in lrs or not value:
            sys.exit(f"--lr {item!r}: write METHOD=LR with METHOD one of {', '.join(lrs)}")
        lrs[method] = float(value)
    args.lr = lrs
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"--model {args.model}: no model folder (run `make run` first for the default)")
    work = Path(args.work)
    train, test = write_data(work, args.train, args.test, digits=args.digits, kinds=args.kinds)
    runs = [run_method(method, args, work)["out"] for method in args.methods]
    rows = report(args.model, test, runs, shots=args.shots, shot_records=train)
    total = rows[-1]["total"]
    lines = [f"Command: `{command()}`", "",
             f"Base: {args.model} ({total:,} parameters). {len(train):,} training "
             f"problems, {len(test)} held-out test problems ({', '.join(args.kinds)}; operands up to {args.digits} "
             f"digits), {args.steps} steps of {args.batch_size}, learning rates {args.lr}, fp32, 2 CPU threads. "
             "Exact match of the final answer, greedy decoding, overall and per task. Peak memory is the "
             "training process's maximum resident set (the Python interpreter and torch included). The same "
             "table from the command line: `groundup arithmetic report` (docs/finetune.md).", "",
             *table(rows, test)]
    emit("Goat in small: fine-tuning methods vs few-shot prompting on arithmetic", lines, args.out)


if __name__ == "__main__":
    main()
