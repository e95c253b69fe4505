"""Verifiable rewards for GRPO: plain Python functions f(prompt, completion, record) -> float.

``record`` is the prompt's whole JSONL record, so a function can read the reference answer from it. Built-in
functions are named; one of your own is given as ``path/to/file.py:function`` (a local file you wrote: it
runs as Python code).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from ..data.arithmetic import final_answer


def goat_exact(prompt: str, completion: str, record: dict) -> float:
    """1 when the completion's final answer (the number, or "q R r", it ends with) equals the record's
    ("answer", or the final answer of its "completion"), else 0 (the Goat exact match of docs/goat.md)."""
    want = record.get("answer")
    if want is None:
        want = final_answer(str(record.get("completion", "")))
    if want is None:
        raise ValueError("the record has no 'answer' and no 'completion' with a final answer to compare with")
    return float(final_answer(completion) == str(want).strip())


def goat_format(prompt: str, completion: str, record: dict) -> float:
    """1 when the completion ends with a final answer in the Goat format (a number or "q R r"), else 0."""
    return float(final_answer(completion) is not None)


BUILTIN: dict[str, Callable[[str, str, dict], float]] = {"goat_exact": goat_exact, "goat_format": goat_format}


def load_reward_fn(spec: str) -> Callable[[str, str, dict], float]:
    """A built-in reward by name, or ``file.py:function`` from a local file."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise ValueError(f"--reward {spec!r}: give a built-in ({', '.join(BUILTIN)}) or file.py:function")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--reward {spec!r}: no such file {file}")
    module_spec = importlib.util.spec_from_file_location(f"groundup_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--reward {spec!r}: {file} has no function {name!r}")
    return fn
