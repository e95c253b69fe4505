"""groundup against llama.cpp on the same GGUF files, same threads: greedy decode and prefill tokens/s.

    python bench/llamacpp.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --llama-python /tmp/lcpp/bin/python
                             [--prompt 128] [--new 64] [--repeats 5] [--compile] [--out docs/bench_llamacpp.md]

llama.cpp runs through llama-cpp-python in the interpreter named by --llama-python (a venv of its own: the
build is a bench dependency, never a groundup one). Built from the PyPI sdist; on CPUs where the native build
dies with SIGILL, with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF
-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF".

The given file is run as it is, and re-encoded by groundup's save_gguf as Q8_0 and Q4_0 (from its decoded
weights), which llama.cpp then loads too: every row reads one file in both programs. groundup decodes a
file to float and runs it quantized to its own int8 (for Q8_0) or int4 groups of 32 (for Q4_x), the head
included, and the shipped file also in fp32 and bf16; optionally also with --compile. A random 128-token
prompt (ids in the vocabulary); decode rate is (new - 1) tokens over the time after the first token;
prefill rate is prompt tokens over the time to the first token. The fastest of --repeats runs, for both
programs: on a shared machine whose speed swings by 1.5x within minutes, medians taken a minute apart compare
different machines. The last column:
how many of the first 16 greedy ids equal llama.cpp's, up to the first difference.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from gguf_agree import families, llama_logits
from quant import decode_rate, variant
from report import command, emit

import groundup as gu
from groundup import kernels
from groundup.checkpoint.gguf import matrix_type
from groundup.generate.compiled import compile_seconds
from groundup.kernels.ggml_quants import FORMATS
from groundup.utils.gguf_read import read_header

LLAMA = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, new, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompt = json.loads(sys.argv[5])
llm = Llama(model_path=path, n_ctx=len(prompt) + new + 8, n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False)
def run(n):
    llm.reset()
    t0, t1, toks = time.perf_counter(), None, []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if t1 is None:
            t1 = time.perf_counter()
        toks.append(int(tok))
        if len(toks) == n:
            break
    return t1 - t0, time.perf_counter() - t1, toks
run(4)
pre, dec = [], []
for _ in range(repeats):
    p, d, toks = run(new)
    pre.append(p); dec.append(d)
pre, dec = min(pre), min(dec)
print(json.dumps(dict(prefill=len(prompt) / pre, decode=(new - 1) / dec, ids=toks[:16])))
"""


def agreement(python: str, path: Path, model, ids: list[int], threads: int, tmp: str) -> dict:
    """llama.cpp's next-token logits on ``ids`` against groundup's for the same file (or, with ``model`` None,
    against llama.cpp's own with its KV cache in f32 instead of f16: how far a last-bit change moves it): top-1
    agreement, mean KL (llama.cpp || other) per token, and both perplexities."""
    import torch.nn.functional as F

    theirs = llama_logits(python, path, ids, threads, tmp).log_softmax(-1)
    if model is None:
        ours = llama_logits(python, path, ids, threads, tmp, f32_kv=True).log_softmax(-1)
    else:
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0].float().log_softmax(-1)
    kl = F.kl_div(ours, theirs, log_target=True, reduction="none").sum(-1).mean()
    nxt = torch.tensor(ids[1:])[:, None]
    return dict(top1=float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()), kl=float(kl),
                ppl_theirs=float((-theirs[:-1].gather(-1, nxt).mean()).exp()),
                ppl_ours=float((-ours[:-1].gather(-1, nxt).mean()).exp()))


def llama_cpp(python: str, path: Path, threads: int, prompt: list[int], new: int, repeats: int) -> dict:
    out = subprocess.run([python, "-c", LLAMA, str(path), str(threads), str(new), str(repeats), json.dumps(prompt)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"llama.cpp on {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def groundup_rate(model, prompt: list[int], new: int, repeats: int, compile: bool) -> dict:
    """groundup's prefill and decode tokens/s (bench/quant.py's measurement) and its first 16 greedy ids."""
    ids = torch.tensor([prompt])
    rate, prefill = decode_rate(lambda n: gu.generate(model, ids, n, compile=compile), 1, new, repeats, best=True)
    out = gu.generate(model, ids, 16, compile=compile)
    return dict(prefill=len(prompt) / prefill, decode=rate, ids=out[0, len(prompt):].tolist())


BLOCKS = "GGUF blocks, native kernels"


def compute_formats(kind: str, floats: bool) -> list[tuple[str, dict | None]]:
    """groundup's ways to run a file of llama.cpp type ``kind``: the file's own blocks (the default load), its
    nearest own format (head included, as llama.cpp quantizes the output matrix too), and with ``floats`` the
    decoded float weights as well."""
    own = ("int8", dict(method="int8")) if kind.startswith("Q8") else ("int4 g32", dict(method="int4", group_size=32))
    return [(BLOCKS, None)] + ([("fp32", None), ("bf16", None)] if floats else []) + [own]


def wanted(fmt: str, formats: str) -> bool:
    """Whether row ``fmt`` is among --formats (blocks, fp32, bf16, own, or all)."""
    names = {"blocks" if fmt == BLOCKS else fmt if fmt in ("fp32", "bf16") else "own"}
    return formats == "all" or bool(names & set(formats.split(",")))


def load_as(path: Path, fmt: str, spec: dict | None):
    """The file loaded for one row: its blocks kept, or decoded to float and converted (bench/quant.variant)."""
    if fmt == BLOCKS:
        return gu.from_pretrained(path).eval()
    return variant(gu.from_pretrained(path, dequantize=True).eval(), fmt, spec, head=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--compile", action="store_true", help="also groundup with compile=True")
    ap.add_argument("--text", default=None, help="held-out text: llama.cpp's logits on it against groundup's")
    ap.add_argument("--families", action="store_true", help="also: tiny models of every architecture save_gguf "
                    "writes, run by llama.cpp against groundup")
    ap.add_argument("--formats", default="all", help="comma-separated groundup rows to run: blocks, fp32, bf16, "
                    "own (int8 / int4), or all")
    ap.add_argument("--no-reencode", action="store_true", help="only the given file (no Q8_0 / Q4_0 re-encodings)")
    ap.add_argument("--llama-build", default="", help="how llama.cpp was built (CMAKE_ARGS), for the table")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source = Path(args.gguf)
    base = gu.from_pretrained(source, dequantize=True).eval()  # float: re-encoded below, and the fp32 reference
    tok = gu.Tokenizer.from_file(source)
    prompt = torch.randint(100, base.config.vocab_size, (args.prompt,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    kind = matrix_type(source)
    counts = collections.Counter(FORMATS[t.type_id][0] for t in read_header(source, FORMATS)[1] if len(t.shape) == 2)
    mix = " + ".join(f"{n} {name}" for name, n in counts.most_common())  # e.g. "108 Q4_1 + 1 Q8_0"
    rows, agree, fams = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.families:
            fams = families(args.llama_python, args.threads, tmp)
        files = [(kind, source)]
        for dtype in () if args.no_reencode else ("q8_0", "q4_0"):
            files.append((dtype.upper(), base.save_gguf(Path(tmp) / f"{dtype}.gguf", dtype=dtype, tokenizer=tok)))
        if args.text:
            ids = tok.encode(Path(args.text).read_text(errors="replace"))[:512]
            f32 = base.save_gguf(Path(tmp) / "f32.gguf", dtype="f32", tokenizer=tok)
            kept = gu.from_pretrained(source).eval()
            for label, path, model in ((f"{kind} as shipped, groundup on its blocks", source, kept),
                                       (f"{kind} as shipped, groundup in fp32", source, base),
                                       (f"{kind} as shipped, llama.cpp itself with an f32 KV cache", source, None),
                                       ("F32 re-encoding (groundup's writer), fp32", f32, base)):
                agree.append(dict(file=label, tokens=len(ids), **agreement(args.llama_python, path, model, ids,
                                                                           args.threads, tmp)))
                print(agree[-1], flush=True)
            del kept
        del base
        for label, path in files:
            ref = llama_cpp(args.llama_python, path, args.threads, prompt, args.new, args.repeats)
            rows.append(dict(file=label, impl="llama.cpp", fmt=label, **ref, ref=ref))
            print(rows[-1], flush=True)
            for fmt, spec in compute_formats(label, floats=path == source):
                if not wanted(fmt, args.formats):
                    continue
                model = load_as(path, fmt, spec)
                for comp in (False, True) if args.compile else (False,):
                    r = groundup_rate(model, prompt, args.new, args.repeats, comp)
                    name = fmt + (", compiled" if comp else "")
                    extra = f" (compile {compile_seconds(model):.0f} s)" if comp else ""
                    rows.append(dict(file=label, impl="groundup", fmt=name + extra, **r, ref=ref))
                    print(rows[-1], flush=True)
                del model
    lines = [f"Command: `{command()}`", "",
             f"`{source.name}` ({mix} as shipped)" + ("" if args.no_reencode else " and groundup's Q8_0 / Q4_0 "
                                                      "re-encodings of it") + ", each file run by both programs;"
             f" {args.threads} threads, greedy, {args.prompt}-token random prompt, {args.new} new "
             f"tokens, batch 1, the fastest of {args.repeats} runs each, torch {torch.__version__}, groundup "
             f"kernels: {kernels.variant()}. Ratios against "
             f"llama.cpp on the same file" + (f"; llama.cpp built with {args.llama_build}." if args.llama_build
                                               else "."), "",
             "| file | impl | computes in | prefill tok/s | vs llama.cpp | decode tok/s | vs llama.cpp | "
             "greedy ids equal to llama.cpp's (of 16) |", "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        same = next((i for i, (a, b) in enumerate(zip(r["ids"], r["ref"]["ids"], strict=False)) if a != b),
                    min(len(r["ids"]), len(r["ref"]["ids"])))
        lines.append(f"| {r['file']} | {r['impl']} | {r['fmt']} | {r['prefill']:,.1f} | "
                     f"{r['prefill'] / r['ref']['prefill']:.2f} | {r['decode']:,.1f} | "
                     f"{r['decode'] / r['ref']['decode']:.2f} | {same}/16 |")
    if agree:
        lines += ["", f"Logits on held-out text (`{args.text}`, first {agree[0]['tokens']} tokens): llama.cpp on the "
                  "file against groundup on its blocks (8-bit activations, as llama.cpp) and on its fp32 decoding, "
                  "and against llama.cpp itself with its KV cache in f32 (the default is f16): how much a last-bit "
                  "change alone moves the top-1 token on this text. bench/llamacpp_trace.py shows each product equal "
                  "to llama.cpp's given the same input.", "",
                  "| file | top-1 agreement | mean KL per token | perplexity llama.cpp | perplexity other |",
                  "|---|---:|---:|---:|---:|"]
        for a in agree:
            lines.append(f"| {a['file']} | {a['top1']:.4f} | {a['kl']:.2e} | {a['ppl_theirs']:.3f} | "
                         f"{a['ppl_ours']:.3f} |")
    if fams:
        lines += ["", "Every architecture save_gguf writes, as a tiny random F32 file (bench/gguf_agree.py: 2 layers, "
                  "d_model 64, GQA 4/2): llama.cpp's logits on one sentence against groundup's.", "",
                  "| architecture | max abs logit difference | largest logit |", "|---|---:|---:|"]
        lines += [f"| {f['arch']} | {f['diff']:.1e} | {f['scale']:.2f} |" for f in fams]
    emit("groundup against llama.cpp on the same GGUF files", lines, args.out)


if __name__ == "__main__":
    main()
