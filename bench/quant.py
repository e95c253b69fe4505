"""Weight-only quantization: decode speed and quality of int8 / int4 against the float model, one process.

    python bench/quant.py [--repeats 3] [--new 64] [--prompt 128] [--batches 1 8] [--model llama|gpt2] [--compile]
                          [--quality FOLDER --text FILE] [--out docs/bench_quant.md]

Speed: greedy decoding of `--new` tokens after a `--prompt`-token random prompt with groundup in fp32, bf16,
int8 and int4 (groups of 32 and 128) and transformers in fp32 and bf16, the same random weights (the
llama-125m preset as a transformers Llama, or gpt2-124M). Decode time is a `--new`-token call minus a
1-token call; medians of `--repeats` alternating runs.

Memory (`--memory`): each format is saved as a folder (the quantized ones by groundup.quant), then a child
process loads that folder and decodes `--new` tokens at batch 1; its peak resident memory (VmHWM) is
reported, so a format's figure holds only what decoding it needs.

Quality (`--quality`, a trained groundup/HF folder or a GGUF file, whose decoded weights are then the float
reference, with `--text`, held-out text of its domain): perplexity of each format over non-overlapping windows
of the text, and the mean KL divergence (float || quantized) of the next-token distributions, per token.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from forward import hf_model
from report import command, emit

import groundup as gu
from groundup.generate.compiled import compile_seconds
from groundup.quant import quantize

FORMATS = [("fp32", None), ("bf16", None), ("int8", dict(method="int8")),
           ("int4 g32", dict(method="int4", group_size=32)), ("int4 g128", dict(method="int4", group_size=128))]


def variant(base: gu.CausalLM, name: str, spec: dict | None, *, head: bool = False) -> gu.CausalLM:
    """The float model in fp32 or bf16, or a quantized copy (its remaining float parts in bf16); an untied head
    is quantized too, a tied one only with ``head`` (then untied into a quantized copy)."""
    m = copy.deepcopy(base)
    if name == "fp32":
        return m.float().eval()
    m = m.to(torch.bfloat16).eval()
    if spec is not None:
        quantize(m, spec["method"], group_size=spec.get("group_size", 64),
                 include_head=head or not m.config.tie_embeddings, indivisible="int8")
    return m


def decode_rate(fn, batch: int, new: int, repeats: int, best: bool = False) -> tuple[float, float]:
    """(decode tokens/s, prefill seconds) from `new`-token and 1-token calls, medians of `repeats` (or, with
    ``best``, the fastest of each: on a shared machine whose speed swings, its quiet moments)."""
    fn(new)  # warm-up: also where the autotuner measures each shape
    fn(1)
    t_new, t_one = [], []
    for _ in range(repeats):
        for n, ts in ((new, t_new), (1, t_one)):
            t0 = time.perf_counter()
            fn(n)
            ts.append(time.perf_counter() - t0)
    pick = 0 if best else repeats // 2
    a, b = sorted(t_new)[pick], sorted(t_one)[pick]
    return batch * (new - 1) / max(a - b, 1e-9), b


def speed(model_name: str, batches: list[int], prompt: int, new: int, repeats: int, compile: bool = False
          ) -> list[dict]:
    ref = hf_model(model_name)
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        base = gu.from_pretrained(tmp).eval()
    rows = []
    for batch in batches:
        ids = torch.randint(0, ref.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
        for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            theirs = ref.to(dtype)

            def hf_call(n: int, theirs=theirs, ids=ids):
                with torch.no_grad():
                    return theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                           min_new_tokens=n, do_sample=False)

            rate, pre = decode_rate(hf_call, batch, new, repeats)
            rows.append(dict(impl="transformers", fmt=label, batch=batch, rate=rate, prefill=pre))
            print(rows[-1], flush=True)
        ref.float()
        for fmt, spec in FORMATS:
            m = variant(base, fmt, spec)
            size = sum({t.data_ptr(): t.numel() * t.element_size() for t in m.state_dict().values()}.values())
            for comp in (False, True) if compile else (False,):
                rate, pre = decode_rate(lambda n, m=m, ids=ids, c=comp: gu.generate(m, ids, n, compile=c), batch, new,
                                        repeats)
                label = f"{fmt}, compiled ({compile_seconds(m):.0f} s)" if comp else fmt
                rows.append(dict(impl="groundup", fmt=label, batch=batch, rate=rate, prefill=pre, mib=size / 2**20))
                print(rows[-1], flush=True)
            del m
    return rows


# VmHWM, the peak of this process's own address space: ru_maxrss would carry over the parent's peak from
# the fork that started it. An empty path: only the imports and the native kernels (the baseline).
CHILD = """
import sys, torch, groundup as gu
from groundup import kernels
torch.set_num_threads(int(sys.argv[3]))
kernels.available()
if sys.argv[1]:
    model = gu.from_pretrained(sys.argv[1]).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
    gu.generate(model, ids, int(sys.argv[2]))
print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))
"""


def peak_mib(path: str, new: int, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads ``path`` (a folder or a GGUF file; "" for none) and decodes
    ``new`` tokens after a 128-token prompt at batch 1."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", CHILD, path, str(new), str(threads)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1]) / 1024


def memory(model_name: str, new: int) -> list[dict]:
    """Peak RSS (MiB) of a fresh process that loads each format's folder and decodes `new` tokens."""
    ref = hf_model(model_name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(Path(tmp) / "hf")
        base = gu.from_pretrained(Path(tmp) / "hf").eval()
        for fmt, spec in FORMATS:
            folder = Path(tmp) / fmt.replace(" ", "_")
            variant(base, fmt, spec).save_pretrained(folder)
            rows.append(dict(fmt=fmt, rss=peak_mib(str(folder), new, torch.get_num_threads())))
            print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def quality(folder: str, text_file: str, window: int = 256, max_windows: int = 64) -> list[dict]:
    """Perplexity of every format and mean KL (float || format) per token on held-out text."""
    tok = gu.Tokenizer.from_file(folder)  # a folder's tokenizer.json, or a GGUF file's vocabulary
    ids = tok.encode(Path(text_file).read_text(errors="replace"))
    n = min(len(ids) // window, max_windows)
    if n < 1:
        raise SystemExit(f"{text_file}: fewer than {window} tokens")
    batch = torch.tensor(ids[: n * window]).view(n, window)  # [windows, window]
    base = gu.from_pretrained(folder).float().eval()
    ref_logp = base(batch).float().log_softmax(-1)  # [n, window, V]
    rows = []
    for fmt, spec in FORMATS:
        m = variant(base, fmt, spec)
        logp = m(batch).float().log_softmax(-1)
        nll = -logp[:, :-1].gather(-1, batch[:, 1:, None]).mean()
        kl = F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1).mean()
        rows.append(dict(fmt=fmt, ppl=math.exp(float(nll)), kl=float(kl), tokens=n * window))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--model", choices=("llama", "gpt2"), default="llama")
    ap.add_argument("--quality", default=None, help="a trained model folder (with tokenizer.json) or a GGUF file")
    ap.add_argument("--text", default=None, help="held-out text for --quality")
    ap.add_argument("--windows", type=int, default=64, help="--quality: at most this many 256-token windows")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also each groundup format with compile=True (the "
                    "compile time in the label)")
    ap.add_argument("--memory", action="store_true", help="peak RSS of decoding each format, in child processes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    lines = [f"Command: `{command()}`", ""]
    if not args.skip_speed:
        rows = speed(args.model, args.batches, args.prompt, args.new, args.repeats, args.compile)
        lines += [f"Decode, {args.model} ({'llama-125m preset' if args.model == 'llama' else 'gpt2-124M'}, random "
                  f"weights), greedy, {args.prompt}-token prompt, {args.new} new tokens, torch "
                  f"{torch.__version__}, {torch.get_num_threads()} threads. Quantized models keep their other "
                  "parts in bf16; ratios against groundup bf16 and transformers bf16 of the same batch.", "",
                  "| impl | format | batch | decode tok/s | vs groundup bf16 | vs transformers bf16 | prefill s | "
                  "tensors MiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            same = [x for x in rows if x["fmt"] == "bf16" and x["batch"] == r["batch"]]
            ours = next(x for x in same if x["impl"] == "groundup")
            hf = next(x for x in same if x["impl"] == "transformers")
            lines.append(f"| {r['impl']} | {r['fmt']} | {r['batch']} | {r['rate']:,.1f} | "
                         f"{r['rate'] / ours['rate']:.2f} | {r['rate'] / hf['rate']:.2f} | {r['prefill']:.3f} | "
                         f"{r.get('mib', float('nan')):,.0f} |")
    if args.memory:
        mem = memory(args.model, args.new)
        lines += ["", f"Peak resident memory of a process that loads each format's folder and decodes {args.new} "
                  "tokens at batch 1 (torch itself takes a few hundred MiB):", "",
                  "| format | peak RSS MiB | vs fp32 |", "|---|---:|---:|"]
        for r in mem:
            lines.append(f"| {r['fmt']} | {r['rss']:,.0f} | {r['rss'] / mem[0]['rss']:.2f} |")
    if args.quality:
        q = quality(args.quality, args.text, max_windows=args.windows)
        lines += ["", f"Quality of `{args.quality}` on `{args.text}` ({q[0]['tokens']:,} tokens, windows of 256):",
                  "",
                  "| format | perplexity | vs fp32 | mean KL (fp32 \\|\\| format) per token |", "|---|---:|---:|---:|"]
        for r in q:
            change = 100 * (r["ppl"] / q[0]["ppl"] - 1)
            lines.append(f"| {r['fmt']} | {r['ppl']:.3f} | {change:+.2f}% | {r['kl']:.5f} |")
    emit("Weight-only quantization benchmark", lines, args.out)


if __name__ == "__main__":
    main()
