"""Load test of `groundup serve` on loopback: streaming clients at several concurrencies, against the same
requests sent one at a time, and the same load on transformers' own `transformers serve` (continuous
batching on) when the installed transformers has it, else on groundup with --max-seqs 1 (a naive server
that decodes one request at a time).

    python bench/serve.py --model FOLDER [--clients 16 64] [--requests 64] [--sequential 8]
                          [--prompt-tokens 32] [--max-tokens 64] [--against transformers|naive|none]
                          [--time-limit 900] [--out docs/bench_serve.md]

Every request is a streaming /v1/completions call, greedy, with a different prompt cut from the Python
standard library's source. Throughput counts streamed tokens (one chunk per token on both servers) over the
wall time of the run; TTFT is submit -> first token chunk, ITL the gaps between a request's chunks. A run
stops at --time-limit; requests still open then are counted as unfinished, and errors are counted, so that
nothing is lost silently. Each server runs alone on the machine (one at a time, 2 threads each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import itertools

import httpx
from report import command, emit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path, timeout: float = 300) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(cmd)} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{' '.join(cmd)} did not answer in {timeout} s")


def prompts(folder: str, n: int, tokens: int) -> list[str]:
    """n different texts of about ``tokens`` tokens, cut from the standard library's source."""
    import json as json_mod

    import groundup as gu

    tok = gu.Tokenizer.from_pretrained(folder)
    src = Path(json_mod.__file__).parent.parent
    text = "".join(p.read_text(errors="ignore") for p in sorted(src.glob("*.py"))[:40])
    out, pos = [], 0
    while len(out) < n:
        ids = tok.encode(text[pos: pos + tokens * 6], add_special_tokens=False)[:tokens]
        out.append(tok.decode(ids))
        pos += tokens * 6 + 997
    return out


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    times = []
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    return {"error": ev["error"].get("message", "error")}
                if ev.get("choices"):
                    times.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"error": type(e).__name__}
    if not times:
        return {"error": "no tokens"}
    return {"ttft": times[0] - t0, "gaps": [b - a for a, b in itertools.pairwise(times)],
            "tokens": len(times)}


async def load(url: str, model: str, texts: list[str], clients: int, max_tokens: int, limit: float) -> dict:
    sem = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(limit), limits=httpx.Limits(max_connections=clients + 4)) as c:
        async def guarded(p):
            async with sem:
                return await one(c, url, model, p, max_tokens)

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(guarded(p)) for p in texts]
        done, pending = await asyncio.wait(tasks, timeout=limit)
        wall = time.perf_counter() - t0
        for t in pending:
            t.cancel()
    results = [t.result() for t in done]
    ok = [r for r in results if "error" not in r]
    gaps = sorted(g for r in ok for g in r["gaps"])
    ttft = sorted(r["ttft"] for r in ok)

    def q(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    return {"clients": clients, "requests": len(texts), "ok": len(ok), "errors": len(results) - len(ok),
            "unfinished": len(pending), "tokens": sum(r["tokens"] for r in ok), "wall": wall,
            "tok_s": sum(r["tokens"] for r in ok) / wall, "ttft50": q(ttft, 0.5), "ttft99": q(ttft, 0.99),
            "itl50": q(gaps, 0.5), "itl99": q(gaps, 0.99)}


def run_server(name: str, cmd: list[str], port: int, model: str, args, texts: list[str]) -> list[dict]:
    log = Path(f"/tmp/bench_serve_{name}.log")
    proc = start(cmd, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(load(url, model, texts[:2], 2, 8, args.time_limit))  # warm-up: first-use costs
        rows = []
        seq = asyncio.run(load(url, model, texts[: args.sequential], 1, args.max_tokens, args.time_limit))
        rows.append({**seq, "server": name})
        print(f"{name}: one at a time {seq['tok_s']:.1f} tok/s", flush=True)
        for c in args.clients:
            n = max(c, args.requests)
            r = asyncio.run(load(url, model, texts[:n], c, args.max_tokens, args.time_limit))
            rows.append({**r, "server": name})
            print(f"{name}: {c} clients {r['tok_s']:.1f} tok/s ({r['ok']}/{n} ok)", flush=True)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrent run (at least --clients)")
    ap.add_argument("--sequential", type=int, default=8, help="requests sent one at a time for the baseline")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--against", choices=["transformers", "naive", "none"], default="transformers")
    ap.add_argument("--time-limit", type=float, default=900, help="seconds one run may take")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    texts = prompts(args.model, max([args.requests, args.sequential, *args.clients]), args.prompt_tokens)
    gu_cmd = [sys.executable, "-m", "groundup", "serve", args.model, "--max-step-tokens", "256",
              "--max-requests", str(max(args.requests, *args.clients) + 8)]
    port = free_port()
    rows = run_server("groundup", [*gu_cmd, "--max-seqs", str(max(args.clients)), "--port", str(port)], port,
                      Path(args.model).name, args, texts)
    against = args.against
    if against == "transformers":
        try:
            import fastapi  # noqa: F401
            from transformers.cli import serve  # noqa: F401
        except ImportError:
            print("transformers serve is not available here: comparing with a naive one-at-a-time server")
            against = "naive"
    port = free_port()
    if against == "transformers":
        cmd = [str(Path(sys.executable).with_name("transformers")), "serve", args.model, "--continuous-batching",
               "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]
        rows += run_server("transformers serve", cmd, port, args.model, args, texts)
    elif against == "naive":
        rows += run_server("naive (groundup, --max-seqs 1)",
                           [*gu_cmd, "--max-seqs", "1", "--port", str(port)],
                           port, Path(args.model).name, args, texts)

    base = {r["server"]: r["tok_s"] for r in rows if r["clients"] == 1}
    lines = [f"Command: `{command()}`", "",
             f"Prompts of {args.prompt_tokens} tokens, {args.max_tokens} new tokens each, greedy, streaming.", "",
             "| server | clients | requests | ok | errors | unfinished | tokens | wall s | tok/s | vs one at a time "
             "| TTFT p50 s | TTFT p99 s | ITL p50 ms | ITL p99 ms |", "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['ok']} | {r['errors']} | "
                     f"{r['unfinished']} | {r['tokens']} | {r['wall']:.1f} | {r['tok_s']:.1f} | "
                     f"{r['tok_s'] / base[r['server']]:.2f}x | {r['ttft50']:.2f} | {r['ttft99']:.2f} | "
                     f"{r['itl50'] * 1000:.0f} | {r['itl99'] * 1000:.0f} |")
    gu16 = {r["clients"]: r["tok_s"] for r in rows if r["server"] == "groundup"}
    other = {r["clients"]: r["tok_s"] for r in rows if r["server"] != "groundup"}
    if other:
        lines += ["", "groundup / " + next(r["server"] for r in rows if r["server"] != "groundup") + " tok/s: "
                  + ", ".join(f"{c} clients {gu16[c] / other[c]:.2f}x" for c in gu16 if other.get(c))]
    emit("Serving under load: groundup serve", lines, args.out)


if __name__ == "__main__":
    main()
