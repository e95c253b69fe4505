"""Synthetic arithmetic instructions in the style of Goat (Liu & Low, 2023, "Goat: Fine-tuned LLaMA
Outperforms GPT-4 on Arithmetic Tasks"), as the course shows them:

    3978640188 + 42886272 =        ->  3978640188 + 42886272 = 4021526460
    4523646 minus 67453156         ->  4523646 - 67453156 = -62929510
    Calculate 397 x 4429           ->  397 * 4429 = 4429 * (300 + 90 + 7) = 4429 * 300 + 4429 * 90 + 4429 * 7
                                       = 1328700 + 398610 + 31003 = 1727310 + 31003 = 1758313
    What is 8914 / 64?             ->  8914 - 64 * 100 = 8914 - 6400 = 2514
                                       2514 - 64 * 30 = 2514 - 1920 = 594
                                       594 - 64 * 9 = 594 - 576 = 18
                                       Therefore, 8914 / 64 = 139 R 18

Multiplication is decomposed over the place values of the shorter factor and summed left to right;
division subtracts the largest multiple of the divisor times a place value at each step, as Goat does
for tasks a model cannot do in one step. ``final_answer`` extracts the number (or "Q R r") an answer ends
with, for exact-match scoring.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

KINDS = ("add", "sub", "mul", "div")


def _number(rng: random.Random, digits: int) -> int:
    n = rng.randint(1, digits)
    return rng.randint(10 ** (n - 1) if n > 1 else 0, 10**n - 1)


def multiplication_steps(a: int, b: int) -> str:
    """'a * b = b * (parts of a) = ... = product', decomposing the factor with fewer digits."""
    small, big = (a, b) if len(str(a)) <= len(str(b)) else (b, a)
    digits = str(small)
    parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
    if len(parts) <= 1:
        return f"{a} * {b} = {a * b}"
    lines = [f"{a} * {b} = {big} * ({' + '.join(map(str, parts))})",
             " + ".join(f"{big} * {p}" for p in parts)]
    products = [big * p for p in parts]
    lines.append(" + ".join(map(str, products)))
    total = products[0]
    for k in range(1, len(products)):  # add left to right, one addition per line
        total += products[k]
        rest = products[k + 1:]
        lines.append(" + ".join(map(str, [total, *rest])))
    return " = ".join(lines)


def division_steps(a: int, b: int) -> str:
    """Repeated subtraction of b x (digit x place value), then 'Therefore, a / b = q R r'."""
    lines, rest, q = [], a, 0
    for power in range(len(str(a)), -1, -1):
        place = 10**power
        d = rest // (b * place)
        if d == 0:
            continue
        step = d * place
        lines.append(f"{rest} - {b} * {step} = {rest} - {b * step} = {rest - b * step}")
        rest -= b * step
        q += step
    lines.append(f"Therefore, {a} / {b} = {q} R {rest}")
    return "\n".join(lines)


def problem(kind: str, rng: random.Random, digits: int = 3) -> dict[str, str]:
    """One prompt/completion record of ``kind`` with operands of up to ``digits`` digits."""
    a, b = _number(rng, digits), _number(rng, digits)
    if kind == "add":
        return {"prompt": f"{a} + {b} =", "completion": f" {a} + {b} = {a + b}"}
    if kind == "sub":
        return {"prompt": f"{a} minus {b}", "completion": f" {a} - {b} = {a - b}"}
    if kind == "mul":
        b = _number(rng, max(1, digits - 1))
        return {"prompt": f"Calculate {a} x {b}", "completion": " " + multiplication_steps(a, b)}
    if kind == "div":
        b = max(2, _number(rng, max(1, digits - 1)))
        return {"prompt": f"What is {a} / {b}?", "completion": " " + division_steps(a, b)}
    raise ValueError(f"kind={kind!r}: choose from {', '.join(KINDS)}")


def kind_of(record: dict[str, str]) -> str:
    """The task of a record, from the wording of its prompt (the templates of ``problem``)."""
    p = record["prompt"]
    return "mul" if p.startswith("Calculate") else "div" if p.startswith("What is") else \
        "sub" if " minus " in p else "add"


def dataset(n: int, *, seed: int, kinds: tuple[str, ...] = KINDS, digits: int = 3,
            exclude: set[str] | None = None) -> list[dict[str, str]]:
    """n records, kinds in turn, no prompt twice and none in ``exclude`` (a test set's prompts)."""
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    tries = 0
    while len(out) < n:
        rec = problem(kinds[len(out) % len(kinds)], rng, digits)
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems of up to {digits} digits (the kinds take turns, "
                             "and multiplication and division have fewest: their second operand has a digit less): "
                             "lower n or raise digits")
        if rec["prompt"] not in seen:
            seen.add(rec["prompt"])
            out.append(rec)
    return out


_OPERANDS = re.compile(r"(\d+)\D+?(\d+)")


def operands(prompt: str) -> tuple[int, int]:
    """The two numbers of a problem's prompt ('Calculate 397 x 4429' -> (397, 4429))."""
    m = _OPERANDS.search(prompt)
    if m is None:
        raise ValueError(f"no two numbers in the prompt {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def facts(n: int, *, seed: int, digits: int = 3, exclude: set[tuple[int, int]] | None = None) -> list[str]:
    """n bare equations ("47 + 6 = 53", "53 - 6 = 47", "36 * 6 = 216", "87 / 3 = 29 R 0"), kinds in turn,
    as pretraining text that teaches a base model numbers the way web text taught LLaMA, without Goat's
    instruction format or worked steps. Operand pairs in ``exclude`` (a test set's, either order) never
    appear, so a held-out problem stays unseen."""
    rng, out, tries = random.Random(seed), [], 0
    banned = set(exclude or ()) | {(b, a) for a, b in exclude or ()}
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"the excluded pairs leave almost no {digits}-digit problems: raise digits")
        kind = KINDS[len(out) % len(KINDS)]
        a = _number(rng, digits)
        b = _number(rng, digits if kind in ("add", "sub") else max(1, digits - 1))
        if kind == "div":
            b = max(2, b)
        if (a, b) in banned:
            continue
        out.append(f"{a} + {b} = {a + b}" if kind == "add" else f"{a} - {b} = {a - b}" if kind == "sub" else
                   f"{a} * {b} = {a * b}" if kind == "mul" else f"{a} / {b} = {a // b} R {a % b}")
    return out


_FINAL = re.compile(r"(-?\d+(?: R \d+)?)\s*$")


def final_answer(text: str) -> str | None:
    """The number (or 'q R r') the first line-group of an answer ends with, or None."""
    m = _FINAL.search(text.strip())
    return m.group(1) if m else None


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
