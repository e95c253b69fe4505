"""What the benchmarks share: timing two candidates alternately, and ending with the command that made the
table, the table printed, and (with --out) the same page written to docs/."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def alternate(fa: Callable, fb: Callable, repeats: int, *, setup_a: Callable | None = None,
              setup_b: Callable | None = None) -> tuple[float, float]:
    """Median seconds of fa() and fb() over `repeats` rounds, alternating so that drift in the machine's
    speed hits both alike. With setup_*, each call gets a fresh argument built (untimed) by it. No warm-up:
    callers run their own."""
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeats):
        for f, setup, ts in ((fa, setup_a, ta), (fb, setup_b, tb)):
            args = (setup(),) if setup is not None else ()
            t0 = time.perf_counter()
            f(*args)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def finetune_child(model: str, data: str, out: str, args: list[str]) -> dict:
    """Run `groundup finetune MODEL --data DATA --out OUT ARGS` in its own process; its summary.json plus
    ``child_peak_mb``, the process's peak resident memory as the operating system counted it (os.wait4),
    so every method's figure is its own. Exits with the child's output if it fails."""
    import json
    import os
    import subprocess

    cmd = [sys.executable, "-m", "groundup", "finetune", model, "--data", data, "--out", out, "--quiet", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output}")
    summary = json.loads((Path(out) / "summary.json").read_text())
    return {**summary, "child_peak_mb": usage.ru_maxrss / 1024, "out": out}


def command() -> str:
    """`python bench/<script>.py <its arguments>`, as typed."""
    return " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def emit(title: str, lines: list[str], out: str | None) -> None:
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(f"# {title}\n\n{table}\n", encoding="utf-8")
