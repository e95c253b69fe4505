"""The same lm-evaluation-harness run through its `hf` backend (transformers) and through `groundup`, one
process, task by task: wall time of each and the metrics each reported.

    python bench/eval.py --model FOLDER [--tasks tiny_mc:5 tiny_text goat:0] [--limit 64] [--batch-size 16]
                         [--dtype float32] [--out docs/bench_eval.md]

A task is a shipped task name (or one under --include-path) with an optional ":shots". Both backends get
the same model folder, dtype, batch size and window; the harness builds the same requests for both (the
table checks that their metrics agree). Timed: simple_evaluate on one task, model loading included, the
task index built once beforehand (lm-eval's own start-up is not what is compared). The backends alternate
task by task, groundup first on even repeats, so drift in the machine's speed hits both; one untimed run
of each first pays the first-use costs (imports, kernel set-up, the measured product dispatch).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from report import command, emit, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", nargs="+", default=["tiny_cloze", "tiny_mc:5", "tiny_text", "tiny_gen:2", "goat"])
    ap.add_argument("--include-path", default=None, help="a folder of task YAMLs (default: the shipped tasks)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager

    import groundup.eval as ge

    include = args.include_path or tempfile.mkdtemp(prefix="gu_tasks_")
    if args.include_path is None:
        ge.write_tasks(include)
    tm = TaskManager(include_path=include, include_defaults=False)
    model_args = f"pretrained={args.model},dtype={args.dtype},device=cpu" + (
        f",max_length={args.max_length}" if args.max_length else "")

    def run(backend: str, task: str, shots: int) -> tuple[float, dict]:
        t0 = time.perf_counter()
        r = lm_eval.simple_evaluate(model=backend, model_args=model_args, tasks=[task], num_fewshot=shots,
                                    batch_size=args.batch_size, limit=args.limit, task_manager=tm,
                                    log_samples=False, bootstrap_iters=0)
        seconds = time.perf_counter() - t0
        return seconds, {k.split(",")[0]: v for k, v in r["results"][task].items()
                         if "," in k and "stderr" not in k}

    for backend in ("hf", "groundup"):  # untimed: first-use costs (imports, kernels, measured dispatch)
        run(backend, "tiny_mc", 0)
    rows, total = [], {"hf": 0.0, "groundup": 0.0}
    for spec in args.tasks:
        task, _, shots = spec.partition(":")
        times: dict[str, list[float]] = {"hf": [], "groundup": []}
        metrics: dict[str, dict] = {}
        for rep in range(args.repeats):
            order = ("groundup", "hf") if rep % 2 == 0 else ("hf", "groundup")
            for backend in order:
                seconds, metrics[backend] = run(backend, task, int(shots or 0))
                times[backend].append(seconds)
                print(f"{task} {backend}: {seconds:.1f} s {metrics[backend]}", flush=True)
        t_hf, t_gu = min(times["hf"]), min(times["groundup"])
        total["hf"] += t_hf
        total["groundup"] += t_gu
        shown = "; ".join(f"{k} {metrics['groundup'][k]:.4g} / {metrics['hf'][k]:.4g}" for k in metrics["hf"])
        rows.append(f"| {task} | {shots or 0} | {t_hf:.1f} | {t_gu:.1f} | {t_hf / t_gu:.2f}x | {shown} |")
    lines = [f"Command: `{command()}`", "",
             f"Model {args.model}, {args.dtype}, batch size {args.batch_size}"
             f"{f', first {args.limit} documents of each task' if args.limit else ''}; lm-eval "
             f"{lm_eval.__version__}; {machine()}; {torch.get_num_threads()} threads; best of {args.repeats}.", "",
             "| task | shots | hf backend s | groundup backend s | speed-up | metrics (groundup / hf) |",
             "|---|---:|---:|---:|---:|---|", *rows,
             f"| all | | {total['hf']:.1f} | {total['groundup']:.1f} | {total['hf'] / total['groundup']:.2f}x | |"]
    emit("lm-evaluation-harness: the groundup backend against the hf backend", lines, args.out)


if __name__ == "__main__":
    main()
