"""`groundup eval` and `groundup lm-eval`: score checkpoints on tasks and text, or run lm-evaluation-harness.

    groundup eval out/run/checkpoint --tasks tiny_mc tiny_gen --num-fewshot 2 --out results.json
    groundup eval A B C --tasks goat --markdown table.md --plot scores.png      # one row per model
    groundup eval QUANTIZED --perplexity text.txt --window 512 --stride 256 --kl-against FLOAT
    groundup eval --write-tasks tasks/                                          # shipped tasks, for lm-eval
    groundup lm-eval --model groundup --model_args pretrained=DIR --tasks tiny_mc --include_path tasks/

A model is an HF folder, a .gguf file, or a `groundup finetune` output folder (its checkpoint for full
fine-tuning, else its base model with its adapter). `lm-eval` passes every argument to lm-eval's own command
line, with the `groundup` model registered; network access is off (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import eval as gu_eval
from ..checkpoint.hf import check_model_folder
from ..eval.run import load_model as load
from ..utils.files import atomic_write_text


def add_eval_parsers(sub) -> None:
    e = sub.add_parser("eval", help="perplexity, KL against another model, and multiple-choice / generation tasks")
    e.add_argument("models", nargs="*", help="model folders, .gguf files or `groundup finetune` output folders")
    e.add_argument("--tasks", nargs="+", default=[], help="task YAML or JSONL files, or shipped task names "
                   "(tiny_mc, tiny_gen, tiny_text, goat)")
    e.add_argument("--num-fewshot", type=int, default=None, help="shots per question (default: each task's own)")
    e.add_argument("--seed", type=int, default=1234, help="seed of the few-shot draw (lm-eval's default)")
    e.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    e.add_argument("--perplexity", nargs="+", default=[], metavar="FILE", help="text files to score")
    e.add_argument("--window", type=int, default=None, help="perplexity window (default: the model's context)")
    e.add_argument("--stride", type=int, default=None, help="perplexity stride (default: the window)")
    e.add_argument("--kl-against", default=None, metavar="MODEL", help="reference model for KL divergence and "
                   "top-1 agreement on the --perplexity text")
    e.add_argument("--adapter", default=None, help="a peft adapter folder for the (single) model")
    e.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-length", type=int, default=None, help="the window of task requests (default: context)")
    e.add_argument("--out", default=None, help="write all results (and per-document samples) as JSON here")
    e.add_argument("--markdown", default=None, help="write the table as Markdown here")
    e.add_argument("--plot", default=None, help="save a bar chart of the task scores (PNG/SVG) here")
    e.add_argument("--write-tasks", default=None, metavar="DIR", help="copy the shipped tasks (YAML with "
                   "absolute data paths) into DIR for lm-eval's --include_path, and stop")
    e.set_defaults(func=main_eval)
    lm = sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness's command line with the groundup "
                        "model registered (every argument is lm_eval's)")
    lm.add_argument("args", nargs=argparse.REMAINDER)
    lm.set_defaults(func=lambda a: run_lm_eval(a.args))


def run_lm_eval(argv: list[str]) -> int:
    """lm_eval's own command line on ``argv``, offline, with the groundup model registered."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    if not gu_eval.register():
        raise ValueError(f"lm-eval is not installed: {gu_eval.LM_EVAL_HINT}")
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse's --help and usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    finally:
        sys.argv = old
    return 0


def load_model(spec: str, adapter: str | None, dtype: str):
    """(model, tokenizer, prefix ids, label) of a folder, .gguf file or `groundup finetune` run folder."""

    p = Path(spec)
    if (p / "summary.json").is_file() and (p / "settings.json").is_file():  # a finetune run
        summary = json.loads((p / "summary.json").read_text())
        base = json.loads((p / "settings.json").read_text()).get("model")
        if summary.get("method") == "full":
            spec, adapter = str(p / "checkpoint"), adapter
        elif (p / "adapter").is_dir() and base:
            spec, adapter = base, str(p / "adapter")
        else:
            raise ValueError(f"{spec}: a finetune run without a checkpoint/ or adapter/ (and base) to load")
    elif not (p.suffix == ".gguf" and p.is_file()):

        check_model_folder(spec, "causal_lm", "a decoder-only")
    model, tok, prefix = load(spec, dtype, adapter)
    label = p.parent.name if p.name == "checkpoint" and p.parent.name else p.name or str(p)  # run/checkpoint -> run
    return model, tok, prefix, label


def main_eval(args: argparse.Namespace) -> int:
    if args.write_tasks:
        for f in gu_eval.write_tasks(args.write_tasks):
            print(f"wrote {f}")
        return 0
    if not args.models:
        raise ValueError("name at least one model (or --write-tasks DIR)")
    if not args.tasks and not args.perplexity:
        raise ValueError("nothing to do: give --tasks and/or --perplexity")
    if args.adapter and len(args.models) > 1:
        raise ValueError("--adapter applies to a single model")
    if args.kl_against and not args.perplexity:
        raise ValueError("--kl-against compares next-token distributions on the --perplexity text: give files")
    tasks = [gu_eval.load_task(t) for t in args.tasks]  # every task checked before any model loads
    texts = []
    for f in args.perplexity:
        if not Path(f).is_file():
            raise ValueError(f"--perplexity {f}: no such file")
        texts.append(Path(f).read_text(encoding="utf-8"))
    reference = load_model(args.kl_against, None, args.dtype)[0] if args.kl_against else None
    runs: dict[str, dict[str, Any]] = {}
    for spec in args.models:
        model, tok, prefix, label = load_model(spec, args.adapter, args.dtype)
        res: dict[str, Any] = {"model": spec, "results": {}, "tasks": {}, "samples": {}}
        if tasks:
            res = {"model": spec, **gu_eval.evaluate(model, tok, tasks, num_fewshot=args.num_fewshot, seed=args.seed,
                                                     limit=args.limit, batch_size=args.batch_size,
                                                     max_length=args.max_length, prefix_ids=prefix)}
        if texts:
            per_file = gu_eval.text_perplexity(model, tok, texts, window=args.window, stride=args.stride,
                                               reference=reference, batch_size=args.batch_size)
            res["perplexity"] = {f: p.summary() for f, p in zip(args.perplexity, per_file, strict=True)}
            res["perplexity"]["all"] = sum(per_file[1:], per_file[0]).summary()
        runs[label if label not in runs else spec] = res
    lines = [gu_eval.markdown(runs)] if tasks else []
    if texts:
        lines.append(perplexity_table(runs))
    print("\n\n".join(lines))
    if args.out:
        atomic_write_text(args.out, json.dumps(runs, indent=2, default=str))
    if args.markdown:
        atomic_write_text(args.markdown, "\n\n".join(lines) + "\n")
    if args.plot:
        gu_eval.plot(runs, args.plot)
    return 0


def perplexity_table(runs: dict[str, dict[str, Any]]) -> str:
    """| model | text | tokens | token ppl | bits/byte | word ppl | KL | top-1 | for every run and file."""
    rows = ["| model | text | tokens | token perplexity | bits per byte | word perplexity | KL | top-1 agreement |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, res in runs.items():
        for name, p in res.get("perplexity", {}).items():
            kl = f"{p['kl_divergence']:.5f}" if "kl_divergence" in p else ""
            top1 = f"{p['top1_agreement']:.2%}" if "top1_agreement" in p else ""
            rows.append(f"| {label} | {name} | {p['tokens']:,} | {p['token_perplexity']:.3f} | "
                        f"{p['bits_per_byte']:.4f} | {p['word_perplexity']:.3f} | {kl} | {top1} |")
    return "\n".join(rows)
