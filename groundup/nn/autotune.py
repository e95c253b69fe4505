"""Choose among equivalent implementations by timing them on the running machine, once per shape.

The fastest way to pose a product differs between CPUs and BLAS builds: the weight-major orientation and
split_linear (nn/linear.py) win on some machines and lose to plain F.linear on others. So no choice here is
a constant: the first time a key (op, shape bucket,
dtype, threads, ...) is seen, every candidate runs on the real inputs, candidates whose result disagrees with
the first (the plain path) beyond the dtype's tolerance are dropped, and the fastest median of a few runs is
kept for the rest of the process (as cudnn.benchmark does for convolutions). The first call of a shape
therefore costs a few extra products and reads the results back (the agreement check); later calls are a
dictionary lookup and read nothing.

``GROUNDUP_AUTOTUNE=0`` (or ``enabled(False)``) always takes the first candidate; ``decisions()`` lists what
was chosen, for benchmark reports.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch

_DECISIONS: dict[Hashable, str] = {}
_STATE = {"on": os.environ.get("GROUNDUP_AUTOTUNE", "1") != "0"}
REPEATS = 3
SLOW = 4.0  # a candidate whose first run is this many times the best median so far is not timed again


def tolerance(dtype: torch.dtype) -> float:
    """How far two ways of computing the same product may differ, relative to its size."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


Candidates = Sequence[tuple[str, Callable[[], torch.Tensor]]]


def choose(key: Hashable, make: Callable[[], Candidates]) -> tuple[str, torch.Tensor | None]:
    """The name of the fastest candidate for ``key`` and, when it was measured now, its output.

    ``make()`` returns (name, thunk) pairs computing the same tensor; the first is the reference and the
    fallback. It is called only for a key not decided yet, so a decided call builds nothing but the key. A
    known key returns (name, None): the caller runs the chosen path itself.
    """
    known = _DECISIONS.get(key)
    if known is not None:
        return known, None
    candidates = make()
    if not _STATE["on"] or len(candidates) == 1 or torch.compiler.is_compiling():
        return candidates[0][0], None
    outputs: dict[str, torch.Tensor] = {}
    times: dict[str, float] = {}
    with torch.no_grad():
        for name, run in candidates:
            t0 = time.perf_counter()
            out = run()  # also the warm-up
            first = time.perf_counter() - t0
            if outputs and not _agrees(out, next(iter(outputs.values()))):
                continue  # a path that gives another answer is never chosen
            outputs[name] = out
            if times and first > SLOW * min(times.values()):
                times[name] = first  # already far behind: not worth repeating (some kernels take seconds)
                continue
            runs = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                run()
                runs.append(time.perf_counter() - t0)
            times[name] = sorted(runs)[len(runs) // 2]
    best = min(times, key=times.__getitem__)
    _DECISIONS[key] = best
    return best, outputs[best]


def _agrees(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    scale = b.abs().max().float().clamp(min=1e-6)
    return bool(((a.float() - b.float()).abs().max() / scale) <= tolerance(a.dtype))


def decisions() -> dict[Hashable, str]:
    """Every decision made so far in this process: {key: candidate name}."""
    return dict(_DECISIONS)


def reset() -> None:
    """Forget every decision (they are measured again on next use)."""
    _DECISIONS.clear()


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Within: measure (True) or always take the reference path (False)."""
    before = _STATE["on"]
    _STATE["on"] = on
    try:
        yield
    finally:
        _STATE["on"] = before


def bucket(n: int) -> int:
    """n rounded up to a power of two: prompts of 100 and 120 tokens share one decision."""
    return 1 << max(n - 1, 0).bit_length()
