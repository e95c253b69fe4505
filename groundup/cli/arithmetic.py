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
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint.hf import check_model_folder
from ..data.arithmetic import KINDS, dataset, facts, final_answer, kind_of, operands
from ..data.instruct import SEPARATOR, read_records
from ..generate import generate
from .generate import load_causal


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


def read_problems(path: str | Path) -> list[dict[str, str]]:
    """prompt/completion records of a JSONL file; a line without both fields fails with its number."""

    out = []
    for rec, where in read_records(path):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("prompt", "completion")):
            raise ValueError(f"{where}: needs string fields 'prompt' and 'completion'")
        out.append(rec)
    if not out:
        raise ValueError(f"{path}: no records")
    return out


def exact_match(model, tok, records: Sequence[dict[str, str]], *, prefix: Sequence[int] = (), shots: str = "",
                batch: int = 50) -> list[bool]:
    """For each record, whether the greedy answer to ``shots + prompt + separator`` (after the ``prefix`` ids,
    e.g. a soft prompt's virtual ids) ends with the reference completion's final answer. With shots the
    answer is cut at the first blank line, where the next made-up example would start."""
    import torch

    eos = tok.eos_token_id
    longest = max(len(tok.encode(r["completion"], add_special_tokens=False)) for r in records) + 2
    right = []
    with torch.no_grad():
        for i in range(0, len(records), batch):
            rows = records[i: i + batch]
            prompts = [list(prefix) + tok.encode(shots + r["prompt"] + SEPARATOR) for r in rows]
            out = generate(model, prompts, longest, eos_token_id=eos, pad_token_id=eos,
                           stop_strings=["\n\n"] if shots else None, tokenizer=tok if shots else None)
            # out: (rows, longest prompt + new); the prompts are left-padded, so answers start at one column
            for r, ids in zip(rows, out[:, max(len(p) for p in prompts):].tolist(), strict=True):
                text = tok.decode([t for t in ids if t != eos], skip_special_tokens=True).split("\n\n")[0]
                got = final_answer(text)
                right.append(got is not None and got == final_answer(r["completion"]))
    return right


def run_summary(run: str | Path) -> dict[str, Any]:
    """A finished `groundup finetune` folder's summary.json."""
    if not (Path(run) / "summary.json").is_file():
        raise FileNotFoundError(f"{Path(run) / 'summary.json'}: not a finished `groundup finetune` run")
    return json.loads((Path(run) / "summary.json").read_text())


def load_run(run: str | Path, base: str | Path):
    """A `groundup finetune` output folder -> (model, prefix ids, summary): the fine-tuned checkpoint for
    --method full, else the base with the run's adapter; a soft prompt's virtual ids as the prefix."""

    summary = run_summary(run)
    if summary.get("method") == "full":
        model, _, prefix = load_causal(str(Path(run) / "checkpoint"))
    else:
        model, _, prefix = load_causal(str(base), str(Path(run) / "adapter"))
    return model.eval(), prefix, summary


def report(base: str | Path, test: list[dict[str, str]], runs: Sequence[str | Path] = (), *, shots: int = 4,
           shot_records: Sequence[dict[str, str]] = (), batch: int = 50, log=print) -> list[dict[str, Any]]:
    """One row per method: k-shot prompting of the base first (when shots > 0), then each run."""

    for run in runs:  # every folder and the shots are checked before the first model is loaded
        run_summary(run)
    if shots > 0 and len(shot_records) < shots:
        raise ValueError(f"--shots {shots}: only {len(shot_records)} solved examples to draw from")
    model, tok, _ = load_causal(str(base))
    model.eval()
    total = sum(p.numel() for p in model.parameters())
    rows = []
    if shots > 0:
        text = "".join(r["prompt"] + SEPARATOR + r["completion"].strip() + "\n\n" for r in shot_records[:shots])
        rows.append({"method": f"{shots}-shot prompting (no training)", "trainable": 0, "total": total,
                     "peak_rss_mb": None, "seconds": None,
                     "right": exact_match(model, tok, test, shots=text, batch=batch)})
        log(f"{rows[-1]['method']}: {sum(rows[-1]['right']) / len(test):.1%}")
    for run in runs:
        model, prefix, s = load_run(run, base)
        rows.append({"method": s["method"], "trainable": s["trainable"], "total": s.get("total", total),
                     "peak_rss_mb": s.get("peak_rss_mb"), "seconds": s.get("seconds"),
                     "right": exact_match(model, tok, test, prefix=prefix, batch=batch)})
        log(f"{s['method']} ({run}): {sum(rows[-1]['right']) / len(test):.1%}")
    return rows


def table(rows: list[dict[str, Any]], test: list[dict[str, str]]) -> list[str]:
    """The rows as a Markdown table, with accuracy per task."""

    kinds = list(dict.fromkeys(kind_of(r) for r in test))
    lines = ["| method | trainable parameters | % of total | peak memory MB | training s | exact match | "
             + " | ".join(kinds) + " |", "|---|---:|---:|---:|---:|---:|" + "---:|" * len(kinds)]
    for row in rows:
        per_kind = []
        for k in kinds:
            hits = [ok for ok, r in zip(row["right"], test, strict=True) if kind_of(r) == k]
            per_kind.append(f"{sum(hits) / max(1, len(hits)):.0%}")
        mb, sec = row["peak_rss_mb"], row["seconds"]
        lines.append(f"| {row['method']} | {row['trainable']:,} | {100 * row['trainable'] / row['total']:.3f}% | "
                     f"{'-' if mb is None else f'{mb:,.0f}'} | {'-' if sec is None else f'{sec:.0f}'} | "
                     f"{sum(row['right']) / len(row['right']):.1%} | {' | '.join(per_kind)} |")
    return lines


def write_data(out: str | Path, n_train: int, n_test: int, *, digits: int, kinds: Sequence[str],
               seed: int = 0, n_facts: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """<out>/train.jsonl and <out>/test.jsonl; no test prompt is in the training set. With n_facts,
    <out>/facts.txt: bare equations whose operand pairs are none of the test set's."""

    test = dataset(n_test, seed=seed + 1, kinds=tuple(kinds), digits=digits)
    train = dataset(n_train, seed=seed, kinds=tuple(kinds), digits=digits, exclude={r["prompt"] for r in test})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if n_facts:
        lines = facts(n_facts, seed=seed + 2, digits=digits, exclude={operands(r["prompt"]) for r in test})
        (out / "facts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train, test


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
