"""Goat-style arithmetic data: the course's two worked examples exactly, every answer's final number right,
distinct and held-out prompts, deterministic under a seed."""

from __future__ import annotations

import random
import re

from groundup.data.arithmetic import (
    KINDS,
    dataset,
    division_steps,
    facts,
    final_answer,
    multiplication_steps,
    operands,
    problem,
)


def test_the_course_examples():
    assert multiplication_steps(397, 4429) == (
        "397 * 4429 = 4429 * (300 + 90 + 7) = 4429 * 300 + 4429 * 90 + 4429 * 7 = 1328700 + 398610 + 31003 "
        "= 1727310 + 31003 = 1758313")
    assert division_steps(8914, 64) == ("8914 - 64 * 100 = 8914 - 6400 = 2514\n2514 - 64 * 30 = 2514 - 1920 = 594\n"
                                        "594 - 64 * 9 = 594 - 576 = 18\nTherefore, 8914 / 64 = 139 R 18")


def _value(expr: str) -> int:
    """An expression of integers, +, -, * and parentheses (what the worked steps contain)."""
    assert re.fullmatch(r"[-\d\s+*()]+", expr), expr
    return eval(expr)  # safe: checked above to hold only digits and arithmetic


def test_every_answer_and_every_step_is_right():
    rng = random.Random(0)
    for _ in range(400):
        kind = rng.choice(KINDS)
        rec = problem(kind, rng, digits=4)
        a, b = map(int, re.findall(r"\d+", rec["prompt"])[:2])
        if kind == "div":
            want = f"{a // b} R {a % b}"
        else:
            want = str({"add": a + b, "sub": a - b, "mul": a * b}[kind])
        assert final_answer(rec["completion"]) == want, rec
        steps = rec["completion"].strip().split("\n")
        if kind == "div":
            steps = steps[:-1]  # the "Therefore" line is the final answer, checked above
        for line in steps:  # every side of every step's chain of equalities has one value
            assert len({_value(side) for side in line.split("=")}) == 1, line


def test_datasets_are_distinct_seeded_and_held_out():
    test = dataset(50, seed=1)
    train = dataset(200, seed=0, exclude={r["prompt"] for r in test})
    assert len({r["prompt"] for r in train}) == 200
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert dataset(20, seed=5) == dataset(20, seed=5) != dataset(20, seed=6)
    assert [r["prompt"].split()[0] for r in dataset(4, seed=0)][2:] == ["Calculate", "What"]


def test_facts_are_true_seeded_and_never_use_a_test_pair():
    test = dataset(80, seed=1, digits=2)
    pairs = {operands(r["prompt"]) for r in test}
    lines = facts(4000, seed=2, digits=2, exclude=pairs)
    assert lines == facts(4000, seed=2, digits=2, exclude=pairs) and len(lines) == 4000
    for line in lines:
        m = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (-?\d+)(?: R (\d+))?", line)
        assert m, line
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert (a, b) not in pairs and (b, a) not in pairs
        want = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        assert (int(m.group(4)), int(m.group(5) or 0)) == ((want, 0) if want is not None else divmod(a, b))
    assert {line.split()[1] for line in lines} == {"+", "-", "*", "/"}
    assert operands("Calculate 397 x 4429") == (397, 4429) and operands("What is 8914 / 64?") == (8914, 64)
    assert operands("4523646 minus 67453156") == (4523646, 67453156)
