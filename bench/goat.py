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

import torch
from report import command, emit, finetune_child

import groundup as gu
from groundup.data.arithmetic import dataset, final_answer
from groundup.data.instruct import SEPARATOR
from groundup.peft import load_adapter, soft_prompt

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


@torch.no_grad()
def exact_match(model, tok, records: list[dict], *, prefix: list[int] = (), shots: str = "",
                batch: int = 50) -> list[bool]:
    """For each record, whether the greedy answer ends with the reference's final answer."""
    eos = tok.eos_token_id
    longest = max(len(tok.encode(r["completion"], add_special_tokens=False)) for r in records) + 2
    right = []
    for i in range(0, len(records), batch):
        rows = records[i: i + batch]
        prompts = [list(prefix) + tok.encode(shots + r["prompt"] + SEPARATOR) for r in rows]
        out = gu.generate(model, prompts, longest, eos_token_id=eos, pad_token_id=eos,
                          stop_strings=["\n\n"] if shots else None, tokenizer=tok if shots else None)
        for r, ids in zip(rows, out[:, max(len(p) for p in prompts):].tolist(), strict=True):
            text = tok.decode([t for t in ids if t != eos], skip_special_tokens=True).split("\n\n")[0]
            right.append(final_answer(text) is not None and final_answer(text) == final_answer(r["completion"]))
    return right


def name_acc(row: tuple) -> str:
    return f"{row[0]}: exact match {sum(row[4]) / len(row[4]):.1%}"


def kind_of(record: dict) -> str:
    p = record["prompt"]
    return "mul" if p.startswith("Calculate") else "div" if p.startswith("What is") else \
        "sub" if " minus " in p else "add"


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
    lrs = {"full": 3e-4, "lora": 3e-3, "ia3": 1e-2, "prompt": 3e-2, "prefix": 1e-2}
    for item in args.lr:
        method, _, value = item.partition("=")
        if method not in lrs or not value:
            sys.exit(f"--lr {item!r}: write METHOD=LR with METHOD one of {', '.join(lrs)}")
        lrs[method] = float(value)
    args.lr = lrs
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"--model {args.model}: no model folder (run `make run` first for the default)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kinds = tuple(args.kinds)
    test = dataset(args.test, seed=1, kinds=kinds, digits=args.digits)
    train = dataset(args.train, seed=0, kinds=kinds, digits=args.digits, exclude={r["prompt"] for r in test})
    for name, rows in (("train", train), ("test", test)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = gu.Tokenizer.from_pretrained(args.model)
    base = gu.from_pretrained(args.model)
    total = sum(p.numel() for p in base.parameters())
    shot_rows = train[: args.shots]
    shots = "".join(r["prompt"] + SEPARATOR + r["completion"].strip() + "\n\n" for r in shot_rows)
    table = [(f"{args.shots}-shot prompting (no training)", 0, None, None, exact_match(base, tok, test, shots=shots))]
    print(name_acc(table[-1]), flush=True)
    for method in args.methods:
        s = run_method(method, args, work)
        if method == "full":
            model = gu.from_pretrained(Path(s["out"]) / "checkpoint")
        else:
            model = load_adapter(gu.from_pretrained(args.model), Path(s["out"]) / "adapter")
        prefix = soft_prompt(model).prompt_ids() if method == "prompt" else []
        acc = exact_match(model.eval(), tok, test, prefix=prefix)
        table.append((method, s["trainable"], s["child_peak_mb"], s["seconds"], acc))
        print(name_acc(table[-1]), flush=True)
    lines = [f"Command: `{command()}`", "",
             f"Base: {args.model} ({total:,} parameters, trained on Python source only). {len(train):,} training "
             f"problems, {len(test)} held-out test problems ({', '.join(kinds)}; operands up to {args.digits} "
             f"digits), {args.steps} steps of {args.batch_size}, learning rates {args.lr}, fp32, 2 CPU threads. "
             "Exact match of the final "
             "answer, greedy decoding, overall and per task. Peak memory is the training process's maximum "
             "resident set (the Python interpreter and torch included).", "",
             "| method | trainable parameters | % of total | peak memory MB | training s | exact match | "
             + " | ".join(kinds) + " |", "|---|---:|---:|---:|---:|---:|" + "---:|" * len(kinds)]
    for name, n, mb, sec, acc in table:
        per_kind = []
        for k in kinds:
            hits = [ok for ok, r in zip(acc, test, strict=True) if kind_of(r) == k]
            per_kind.append(f"{sum(hits) / max(1, len(hits)):.0%}")
        lines.append(f"| {name} | {n:,} | {100 * n / total:.3f}% | {'-' if mb is None else f'{mb:,.0f}'} | "
                     f"{'-' if sec is None else f'{sec:.0f}'} | {sum(acc) / len(acc):.1%} | {' | '.join(per_kind)} |")
    emit("Goat in small: fine-tuning methods vs few-shot prompting on arithmetic", lines, args.out)


if __name__ == "__main__":
    main()
