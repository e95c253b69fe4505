"""Every matrix product of llama.cpp's own forward pass, recomputed by groundup's kept-block layers from the same input.

    python bench/llamacpp_trace.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [MORE.gguf ...] \
        --llama-python /tmp/lcpp/bin/python [--tokens 16] [--out docs/bench_llamacpp_trace.md]

llama.cpp runs the file on a few tokens with an evaluation callback (its `cb_eval` hook, through ctypes) that copies
out each product's input activations and its result. groundup's layer for that tensor (GGUFLinear, the native
kernels) takes llama.cpp's input and its result is compared with llama.cpp's: the largest difference relative to
the largest value, per product kind and over all layers. Equal results mean the same weights, the same 8-bit
activation rounding and the same integer sums; what is left between the two programs on a whole model is then in
the float operations between the products (norms, RoPE, softmax, the f16 KV cache), whose last-bit differences
flip an activation's rounding here and there and grow through the layers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from report import command, emit

import groundup as gu
from groundup import kernels
from groundup.checkpoint.gguf_layout import ARCHS, gguf_name, permute_rope
from groundup.nn.gguf_linear import GGUFLinear
from groundup.utils.gguf_read import read_header

TRACE = r"""
import ctypes, json, re, sys
import numpy as np
import llama_cpp as L
path, ids, out, threads = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
pat = re.compile(sys.argv[5])

class T(ctypes.Structure):  # ggml.h's struct ggml_tensor
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]

def f32(t):  # a contiguous F32 tensor's values [rows, ne0], or None
    if t.type != 0 or not t.data or t.nb[0] != 4 or t.nb[1] != 4 * t.ne[0]:
        return None
    n = t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]
    a = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float)), shape=(n,)).copy()
    return a.reshape(-1, t.ne[0])

dump = {}
def weight_of(t):  # the matrix name of a product node (src[0] a 2-D file tensor), or None
    if not t.src[0]:
        return None
    w = ctypes.cast(t.src[0], ctypes.POINTER(T)).contents
    name = w.name.decode()
    return name if pat.fullmatch(name) and w.ne[1] > 1 and w.ne[2] == 1 else None

def w_in(t):  # the inner size of the product's weight
    return ctypes.cast(t.src[0], ctypes.POINTER(T)).contents.ne[0]

@L.ggml_backend_sched_eval_callback
def cb(ptr, ask, user):
    t = ctypes.cast(ptr, ctypes.POINTER(T)).contents
    name = weight_of(t)
    if ask:
        return name is not None
    y, x = f32(t), f32(ctypes.cast(t.src[1], ctypes.POINTER(T)).contents) if t.src[1] else None
    if name is not None and y is not None and x is not None and name not in dump and x.shape[1] == w_in(t):
        dump[name + ".in"], dump[name] = x, y
    return True

L.llama_backend_init()
model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 64 + len(ids), 64 + len(ids), threads, threads
cp.cb_eval = cb
ctx = L.llama_init_from_model(model, cp)
arr = (L.llama_token * len(ids))(*ids)
assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) == 0
np.savez(out, **dump)
"""

WANTED = r"(blk\.\d+\.\w+|output|token_embd)\.weight"  # the file's matrices, as llama.cpp names them


def trace(python: str, path: Path, ids: list[int], threads: int, tmp: str) -> dict[str, np.ndarray]:
    """llama.cpp's products on ``ids``: {name: result [T, N], name + ".in": input [T, K]}."""
    out = Path(tmp, "trace.npz")
    run = subprocess.run([python, "-c", TRACE, str(path), json.dumps(ids), str(out), str(threads), WANTED],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"llama.cpp's trace of {path} failed:\n{run.stderr[-3000:]}")
    return dict(np.load(out))


def compare(model, arch: str, dump: dict[str, np.ndarray]) -> dict[str, tuple[set[str], list[float]]]:
    """Per weight kind (attn_q, ffn_up, output, ...): its ggml types and the relative differences
    max |ours - theirs| / max |theirs| over the layers."""
    cfg, out = model.config, {}
    modules = {gguf_name(n + ".weight"): m for n, m in model.named_modules() if isinstance(m, GGUFLinear)}
    modules["token_embd.weight"] = modules.get("output.weight", model.lm_head)  # a tied head reads the embedding
    for name in sorted(k for k in dump if not k.endswith(".in")):
        x, theirs = torch.from_numpy(dump[name + ".in"]), torch.from_numpy(dump[name])
        kind = name.split(".")[-2] if name.startswith("blk.") else "output"
        with torch.no_grad():
            ours = modules[name](x)
        if ARCHS[arch].interleaved_rope and kind in ("attn_q", "attn_k"):
            # groundup keeps HF's row order; llama.cpp's file interleaves each head's rotary halves
            heads = cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads
            ours = permute_rope(ours.t().contiguous(), heads, to_gguf=True).t()
        types, rel = out.setdefault(kind, (set(), []))
        types.add(modules[name].ggml_type)
        rel.append(float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)))
    return out


def file_table(path: Path, python: str, tokens: int, threads: int) -> list[str]:
    """One file's rows: llama.cpp traced on a sentence, every product recomputed by groundup."""
    model = gu.from_pretrained(path).eval()
    ids = gu.Tokenizer.from_file(path).encode("The quick brown fox jumps over the lazy dog, and then it runs "
                                              "into the forest to find")[:tokens]
    with tempfile.TemporaryDirectory() as tmp:
        dump = trace(python, path, ids, threads, tmp)
    if not dump:
        raise SystemExit(f"{path}: llama.cpp's callback saw no products of tensors named like {WANTED}")
    rows = compare(model, read_header(path)[0]["general.architecture"], dump)
    types = sorted({m.ggml_type for m in model.modules() if isinstance(m, GGUFLinear)})
    lines = [f"`{path.name}` ({', '.join(types)}), {len(ids)} tokens:", "",
             "| product | weight types | layers | largest relative difference | median |", "|---|---|---:|---:|---:|"]
    for kind, (kinds, rel) in rows.items():
        median = float(np.median(rel))
        lines.append(f"| {kind} | {', '.join(sorted(kinds))} | {len(rel)} | {max(rel):.1e} | {median:.1e} |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, nargs="+")
    ap.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"Command: `{command()}`", "",
             f"{args.threads} threads, groundup kernels: {kernels.variant()}, torch {torch.__version__}. Each row: the "
             "inputs llama.cpp gave a product, fed to groundup's layer for the same tensor; the largest "
             "|groundup - llama.cpp| relative to the largest |llama.cpp| value, over the layers.", ""]
    for path in args.gguf:
        lines += file_table(Path(path), args.llama_python, args.tokens, args.threads)
    emit("llama.cpp's products recomputed by groundup", lines[:-1], args.out)


if __name__ == "__main__":
    main()
