"""Training-step throughput: groundup vs transformers' GPT2LMHeadModel, same weights, same batch, one process.

    python bench/train.py [--repeats 3] [--only small|gpt2] [--out docs/bench_train.md]

One step = forward, next-token cross-entropy, backward, AdamW step (torch.optim.AdamW for both). Configs:
a nanoGPT-size GPT (6 layers / 384 dims / context 256 / vocab 8192, batch 16) and gpt2-124M (batch 4 x 512),
in fp32 and with bf16 autocast. The transformers model (dropout 0) is saved and loaded with
groundup.from_pretrained, the first-step losses are checked to agree, then steps alternate after a
warm-up and the median is reported with the ratio (>1: groundup faster) and the fraction of the matmul
peak measured in the same run (training FLOPs = 3 x forward, calc.flops_per_token(training=True)).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from forward import matmul_peak
from report import alternate, command, emit

import groundup as gu
from groundup import calc

CONFIGS = {
    "small": dict(n_layer=6, n_embd=384, n_head=6, n_positions=256, vocab_size=8192, batch=16, seq=256),
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257, batch=4, seq=512),
}


def models(name: str):
    import transformers as T

    c = dict(CONFIGS[name])
    batch, seq = c.pop("batch"), c.pop("seq")
    torch.manual_seed(0)
    ref = T.GPT2LMHeadModel(T.GPT2Config(**c, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         attn_implementation="sdpa"))
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = gu.from_pretrained(tmp)
    return ours.train(), ref.train(), batch, seq


def step_fns(ours, ref, ids, dtype):
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    bf16 = dtype == torch.bfloat16

    def ours_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = ours(ids[:, :-1], targets=ids[:, 1:])  # the trainer's loss: fused lm_head + cross-entropy
        loss.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)
        return loss.item()

    def ref_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = ref(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt_r.step()
        opt_r.zero_grad(set_to_none=True)
        return loss.item()

    return ours_step, ref_step


def bench(name: str, dtype: torch.dtype, repeats: int, peak: float) -> dict:
    ours, ref, batch, seq = models(name)
    ids = torch.randint(0, ours.config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    fo, fr = step_fns(ours, ref, ids, dtype)
    lo, lr_ = fo(), fr()  # first steps: same weights, same batch -> same loss; also the warm-up
    mo, mr = alternate(fo, fr, repeats)
    n = batch * seq
    flops = calc.flops_per_token(ours.config, seq, training=True) * n
    return dict(model=name, dtype=str(dtype).removeprefix("torch."), batch=f"{batch} x {seq}", ours=n / mo,
                ref=n / mr, ratio=mr / mo, peak=flops / mo / peak, loss_diff=abs(lo - lr_))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(CONFIGS), default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    peaks = {torch.float32: matmul_peak(torch.float32), torch.bfloat16: matmul_peak(torch.bfloat16)}
    rows = []
    for name in [args.only] if args.only else list(CONFIGS):
        for dtype in (torch.float32, torch.bfloat16):
            rows.append(bench(name, dtype, args.repeats, peaks[dtype]))
            print(rows[-1], flush=True)
    import transformers

    lines = [f"Command: `{command()}`",
             "", f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} "
             f"threads; matmul peak in this run: fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 "
             f"{peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s. One step = forward + backward + AdamW.", "",
             "| model | dtype | batch | groundup tok/s | transformers tok/s | ratio | groundup % of matmul peak "
             "| first-step loss diff |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} (autocast) | {r['batch']} | {r['ours']:,.0f} | {r['ref']:,.0f} "
                     f"| {r['ratio']:.2f} | {100 * r['peak']:.0f}% | {r['loss_diff']:.1e} |".replace(
                         "float32 (autocast)", "float32"))
    emit("Training step benchmark", lines, args.out)


if __name__ == "__main__":
    main()
