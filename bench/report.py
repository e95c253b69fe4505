"""What the benchmarks share: timing two candidates alternately, and ending with the command that made the
table, the table printed, and (with --out) the same page written to docs/."""

from __future__ import annotations

import os
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


def machine() -> str:
    """The CPU model and the vector/matrix flags that decide which kernels run (BLAS ranks them per CPU)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"]
    return f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(f for f in wanted if f in flags) or 'none of note'}"


def emit(title: str, lines: list[str], out: str | None) -> None:
    lines = [*lines, "", machine()]
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(f"# {title}\n\n{table}\n", encoding="utf-8")
