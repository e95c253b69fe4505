"""The course's Goat experiment scored: fine-tuning runs against few-shot prompting on held-out arithmetic, by exact
match of the final answer under greedy decoding (``groundup arithmetic report`` prints what ``report`` and
``table`` give)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint.hf import check_model_folder
from ..data.arithmetic import final_answer, kind_of
from ..data.instruct import SEPARATOR, read_records
from ..generate.entry import continuations
from .run import load_model


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
    longest = max(len(tok.encode(r["completion"], add_special_tokens=False)) for r in records) + 2
    prompts = [list(prefix) + tok.encode(shots + r["prompt"] + SEPARATOR) for r in records]
    answers = continuations(model, prompts, longest, eos=tok.eos_token_id, batch=batch,
                            stop_strings=["\n\n"] if shots else None, tokenizer=tok if shots else None)
    right = []
    for r, ids in zip(records, answers, strict=True):
        got = final_answer(tok.decode(ids, skip_special_tokens=True).split("\n\n")[0])
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
        model, _, prefix = load_model(str(Path(run) / "checkpoint"), "float32")
    else:
        model, _, prefix = load_model(str(base), "float32", str(Path(run) / "adapter"))
    return model.eval(), prefix, summary


def report(base: str | Path, test: list[dict[str, str]], runs: Sequence[str | Path] = (), *, shots: int = 4,
           shot_records: Sequence[dict[str, str]] = (), batch: int = 50, log=print) -> list[dict[str, Any]]:
    """One row per method: k-shot prompting of the base first (when shots > 0), then each run."""

    for run in runs:  # every folder and the shots are checked before the first model is loaded
        run_summary(run)
    if shots > 0 and len(shot_records) < shots:
        raise ValueError(f"--shots {shots}: only {len(shot_records)} solved examples to draw from")
    check_model_folder(base, "causal_lm", "a decoder-only")
    model, tok, _ = load_model(str(base), "float32")
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
