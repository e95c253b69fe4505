"""`groundup arithmetic`: the course's Goat experiment in small, from the command line.

    groundup arithmetic data --train 2000 --test 200 --digits 2 --out out/goat
    groundup finetune BASE --data out/goat/train.jsonl --method lora --out out/goat/lora   (one per method)
    groundup arithmetic report BASE --test out/goat/test.jsonl --runs out/goat/full out/goat/lora --shots 4

`data` writes Goat-style train and held-out test sets (data/arithmetic.py; no test prompt is in the
training set). `report` scores each `groundup finetune` output folder (the model, or the base with the
run's adapter) and the base prompted with k solved examples and no weight update, by exact match of the
final answer under greedy decoding, and prints one table: method, trainable parameters and their share,
the run's peak memory and time, accuracy overall and per task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint.hf import check_model_folder
from ..data.arithmetic import KINDS, write_data
from ..eval.arithmetic import read_problems, report, table


def add_arithmetic_parser(sub) -> None:
    a = sub.add_parser("arithmetic", help="Goat-style arithmetic data, and a table scoring fine-tuning runs "
                       "against few-shot prompting")
    asub = a.add_subparsers(dest="action", required=True)
    d = asub.add_parser("data", help="write <out>/train.jsonl and <out>/test.jsonl (disjoint prompts)")
    d.add_argument("--train", type=int, default=2000, help="training problems")
    d.add_argument("--test", type=int, default=200, help="held-out problems")
    d.add_argument("--digits", type=int, default=2, help="operands have up to this many digits")
    d.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    d.add_argument("--seed", type=int, default=0, help="training set seed (the test set uses seed + 1)")
    d.add_argument("--facts", type=int, default=0, help="also write <out>/facts.txt: this many bare equations "
                   "(no instruction format, no test set operands) to pretrain a base on, as LLaMA saw numbers")
    d.add_argument("--out", required=True, help="output folder")
    d.set_defaults(func=main_data)
    r = asub.add_parser("report", help="exact match of fine-tuned runs and of k-shot prompting on a test set")
    r.add_argument("model", help="the base model folder the runs were fine-tuned from")
    r.add_argument("--test", required=True, help="test JSONL (prompt/completion records)")
    r.add_argument("--runs", nargs="*", default=[], help="`groundup finetune` output folders")
    r.add_argument("--shots", type=int, default=4, help="solved examples in the few-shot prompt (0: none)")
    r.add_argument("--shots-from", default=None, help="JSONL to take the solved examples from "
                   "(default: train.jsonl next to --test)")
    r.add_argument("--batch-size", type=int, default=50)
    r.add_argument("--out", default=None, help="also write the table as Markdown to this file")
    r.set_defaults(func=main_report)


def main_data(args: argparse.Namespace) -> int:
    if args.train < 1 or args.test < 1 or args.digits < 1 or args.facts < 0:
        raise ValueError("--train, --test and --digits must be >= 1, --facts >= 0")
    train, test = write_data(args.out, args.train, args.test, digits=args.digits, kinds=args.kinds, seed=args.seed,
                             n_facts=args.facts)
    print(f"wrote {len(train):,} training problems to {Path(args.out) / 'train.jsonl'} and {len(test):,} held-out "
          f"problems to {Path(args.out) / 'test.jsonl'}")
    return 0


def main_report(args: argparse.Namespace) -> int:
    check_model_folder(args.model, "causal_lm", "a decoder-only")
    test = read_problems(args.test)
    shot_records: list[dict[str, str]] = []
    if args.shots > 0:
        source = Path(args.shots_from) if args.shots_from else Path(args.test).with_name("train.jsonl")
        shot_records = read_problems(source)
    rows = report(args.model, test, args.runs, shots=args.shots, shot_records=shot_records, batch=args.batch_size)
    lines = table(rows, test)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0
