"""Running tasks on a model: prompts with seeded few-shot examples, the requests a task's kind needs, the
metrics lm-evaluation-harness defines, results as JSON, a Markdown table and a plot.

Metrics (as the harness defines them, so numbers compare):
- multiple choice: ``acc`` (the choice of highest log-likelihood is right) and ``acc_norm`` (the same with
  each log-likelihood divided by the choice's length in characters), with the standard error of the mean;
- generation: ``exact_match`` of the (regex-filtered) greedy answer and the target, optionally ignoring case,
  punctuation or regexes;
- rolling log-likelihood: ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte`` over all documents.

Few-shot examples are drawn as the harness draws them: one ``random.Random(seed)`` for the task, one draw
per document in order, never the document being asked.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..checkpoint.hf import from_pretrained
from ..peft import load_adapter, soft_prompt
from ..tokenizer import Tokenizer
from ..utils.files import atomic_file
from .perplexity import word_count
from .scoring import Scorer
from .tasks import Doc, Task


def shots_for(task: Task, n: int, seed: int) -> list[list[Doc]]:
    """The few-shot documents of each of the task's docs."""
    if n == 0:
        return [[] for _ in task.docs]
    rnd = random.Random(seed)
    exclude = task.fewshot_docs is None
    pool = task.docs if exclude else task.fewshot_docs
    out = []
    for doc in task.docs:
        if task.fewshot_sampler == "first_n":
            out.append([d for d in pool if not exclude or d.fields != doc.fields][:n])
        elif exclude:
            got = [d for d in rnd.sample(pool, n + 1) if d.fields != doc.fields][:n]
            if len(got) < n:  # duplicates of the doc were drawn: draw again from the pool without them
                got = rnd.sample([d for d in pool if d.fields != doc.fields], n)
            out.append(got)
        else:
            out.append(rnd.sample(pool, n))
    return out


def context(task: Task, doc: Doc, shots: Sequence[Doc]) -> str:
    """description, then each shot as question + target delimiter + answer + few-shot delimiter, then the
    question."""
    parts = [task.description]
    for s in shots:
        parts.append(task.text(s) + task.target_delimiter + task.answer_text(s) + task.fewshot_delimiter)
    parts.append(task.text(doc))
    return "".join(parts)


def _stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _extract(task: Task, text: str) -> str:
    for pattern, group, fallback in task.filters:
        found = re.findall(pattern, text)
        if not found:
            return fallback
        m = found[group]
        if isinstance(m, tuple):
            m = next((x for x in m if x), fallback)
        text = m.strip()
    return text


def exact_match(pred: str, gold: str, *, ignore_case: bool = False, ignore_punctuation: bool = False,
                regexes_to_ignore: Sequence[str] = ()) -> bool:
    """The harness's exact match: regexes removed first, then case and punctuation if asked."""
    for r in regexes_to_ignore:
        pred, gold = re.sub(r, "", pred), re.sub(r, "", gold)
    if ignore_case:
        pred, gold = pred.lower(), gold.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        pred, gold = pred.translate(table), gold.translate(table)
    return pred == gold


def evaluate_task(scorer: Scorer, task: Task, *, num_fewshot: int | None = None, seed: int = 1234,
                  limit: int | None = None) -> dict[str, Any]:
    """Metrics of one task (and its per-document samples under "samples")."""
    n_shot = task.num_fewshot if num_fewshot is None else num_fewshot
    if task.kind == "loglikelihood_rolling":
        n_shot = 0  # a text is scored on its own
    # a copy: the caller's task keeps its documents and shot count
    task = replace(task, docs=task.docs[:limit] if limit is not None else task.docs, num_fewshot=n_shot)
    task.check()
    shots = shots_for(task, n_shot, seed)
    samples: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    if task.kind == "multiple_choice":
        reqs, spans = [], []
        for doc, sh in zip(task.docs, shots, strict=True):
            ctx, choices = context(task, doc, sh), task.choices(doc)
            spans.append((len(reqs), choices))
            reqs += [(ctx, task.target_delimiter + c) for c in choices]
        lls = scorer.loglikelihood(reqs)
        acc, acc_norm = [], []
        for doc, (start, choices) in zip(task.docs, spans, strict=True):
            ll = [lp for lp, _ in lls[start: start + len(choices)]]
            gold = task.gold(doc)
            pick = max(range(len(ll)), key=ll.__getitem__)
            norm = [v / len(c) for v, c in zip(ll, choices, strict=True)]
            pick_norm = max(range(len(ll)), key=norm.__getitem__)
            acc.append(float(pick == gold))
            acc_norm.append(float(pick_norm == gold))
            samples.append({"where": doc.where, "gold": gold, "loglikelihoods": ll, "pick": pick})
        metrics = {"acc": sum(acc) / len(acc), "acc_stderr": _stderr(acc),
                   "acc_norm": sum(acc_norm) / len(acc_norm), "acc_norm_stderr": _stderr(acc_norm)}
    elif task.kind == "generate_until":
        ctxs = [context(task, doc, sh) for doc, sh in zip(task.docs, shots, strict=True)]
        outs = scorer.generate_until(ctxs, task.until, task.max_gen_toks)
        opts = next((m for m in task.metrics if m.get("metric") == "exact_match"), {})
        em = []
        for doc, out in zip(task.docs, outs, strict=True):
            pred, gold = _extract(task, out), task.answer_text(doc)
            ok = exact_match(pred, gold, ignore_case=bool(opts.get("ignore_case")),
                             ignore_punctuation=bool(opts.get("ignore_punctuation")),
                             regexes_to_ignore=opts.get("regexes_to_ignore") or ())
            em.append(float(ok))
            samples.append({"where": doc.where, "output": out, "extracted": pred, "gold": gold, "right": ok})
        metrics = {"exact_match": sum(em) / len(em), "exact_match_stderr": _stderr(em)}
    else:
        texts = [task.target(doc) for doc in task.docs]
        lls = scorer.loglikelihood_rolling(texts)
        words = sum(word_count(t) for t in texts)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        total = sum(lls)
        metrics = {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / nbytes),
                   "bits_per_byte": -total / nbytes / math.log(2)}
        samples = [{"where": d.where, "loglikelihood": ll} for d, ll in zip(task.docs, lls, strict=True)]
    return {"kind": task.kind, "num_fewshot": n_shot, "n": len(task.docs), "source": task.source,
            "metrics": metrics, "samples": samples}


def evaluate(model, tokenizer, tasks: Sequence[Task], *, num_fewshot: int | None = None, seed: int = 1234,
             limit: int | None = None, batch_size: int = 16, max_length: int | None = None,
             prefix_ids: Sequence[int] = (), progress: bool = True) -> dict[str, Any]:
    """Every task on one model: {"results": {task: metrics}, "samples": ..., "config": ...}."""
    scorer = Scorer(model, tokenizer, max_length=max_length, batch_size=batch_size, prefix_ids=prefix_ids,
                    progress=progress)
    results, samples, meta = {}, {}, {}
    for task in tasks:
        r = evaluate_task(scorer, task, num_fewshot=num_fewshot, seed=seed, limit=limit)
        results[task.name] = r["metrics"]
        samples[task.name] = r["samples"]
        meta[task.name] = {k: r[k] for k in ("kind", "num_fewshot", "n", "source")}
    return {"results": results, "tasks": meta, "samples": samples,
            "config": {"seed": seed, "limit": limit, "batch_size": batch_size, "max_length": scorer.max_length,
                       "truncated_requests": scorer.truncated}}


MAIN_METRIC = {"multiple_choice": ("acc", "acc_norm"), "generate_until": ("exact_match",),
               "loglikelihood_rolling": ("word_perplexity", "bits_per_byte")}


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    """One row per (model, task, metric) of several runs' results: | model | task | shots | metric | value | ± |."""
    lines = ["| model | task | shots | n | metric | value | stderr |", "|---|---|---:|---:|---|---:|---:|"]
    for label, res in runs.items():
        for task, metrics in res["results"].items():
            meta = res["tasks"][task]
            for m in MAIN_METRIC[meta["kind"]]:
                err = metrics.get(f"{m}_stderr")
                lines.append(f"| {label} | {task} | {meta['num_fewshot']} | {meta['n']} | {m} | {metrics[m]:.4f} | "
                             f"{'' if err is None or math.isnan(err) else f'{err:.4f}'} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, Any]], path: str) -> None:
    """Grouped bars of each run's main score per task (accuracies and exact match; perplexity tasks are
    left to the table), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = []
    for res in runs.values():
        for task, meta in res["tasks"].items():
            if meta["kind"] != "loglikelihood_rolling" and task not in cols:
                cols.append(task)
    if not cols:
        raise ValueError("no accuracy to plot: the runs have perplexity tasks only")
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(cols) * max(1, len(runs)) ** 0.5), 3.2))
    width = 0.8 / len(runs)
    for i, (label, res) in enumerate(runs.items()):
        vals = []
        for task in cols:
            m = res["results"].get(task, {})
            kind = res["tasks"].get(task, {}).get("kind")
            vals.append(m.get(MAIN_METRIC[kind][0], 0.0) if kind else 0.0)
        ax.bar([c + i * width for c in range(len(cols))], vals, width, label=label)
    ax.set_xticks([c + width * (len(runs) - 1) / 2 for c in range(len(cols))], cols)
    ax.set_ylabel("accuracy / exact match")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_file(path, lambda tmp: fig.savefig(tmp))
    plt.close(fig)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "auto": None}


def load_model(pretrained: str, dtype: str | None = "auto", adapter: str | None = None) -> tuple[Any, Any, list[int]]:
    """(model, tokenizer, virtual ids) of an HF folder or .gguf file in ``dtype``, with a peft ``adapter``;
    the virtual ids are a soft prompt's (they precede every input), else none."""

    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose from {', '.join(DTYPES)}")
    model = from_pretrained(pretrained, dtype=DTYPES[str(dtype)])
    if adapter:
        model = load_adapter(model, adapter)
    gguf = str(pretrained).endswith(".gguf")
    tok = Tokenizer.from_file(pretrained) if gguf else Tokenizer.from_pretrained(pretrained)
    prompt = soft_prompt(model)
    return model.eval(), tok, (prompt.prompt_ids() if prompt is not None else [])
