"""The MoE block against its ideal cost and against transformers' blocks, side by side in one run.

Ideal: the FLOPs of the active experts only, run as one dense FFN k x expert_d_ff wide on the same tokens (no
routing, no gather or scatter). Rows: 8 experts top-2 (Mixtral-style SwiGLU; transformers' MixtralSparseMoeBlock
with each of its expert implementations) and Switch top-1 with capacity factor 1.25 (ReLU MLP experts;
transformers' SwitchTransformersSparseMLP with a capacity that drops nothing more than ours). Forward in eval
mode under no_grad, and forward + backward in training mode, medians of alternated repeats.

    python bench/moe_dispatch.py --out docs/moe_dispatch.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import command, emit

import groundup as gu
from groundup.nn.mlp import make_ffn
from groundup.nn.moe import MoE


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, called in turn `repeats` times after one warm-up each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def mixtral_block(moe: MoE, d: int, f: int, impl: str):
    """transformers' MixtralSparseMoeBlock holding the same weights as ``moe``."""
    import transformers as T
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = T.MixtralConfig(hidden_size=d, intermediate_size=f, num_local_experts=moe.n_experts,
                          num_experts_per_tok=moe.top_k)
    cfg._experts_implementation = impl
    block = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        for e, ex in enumerate(moe.experts):
            block.experts.gate_up_proj[e].copy_(torch.cat([ex.gate_proj.weight, ex.up_proj.weight]))
            block.experts.down_proj[e].copy_(ex.down_proj.weight)
    return block


def switch_block(moe: MoE, d: int, f: int, capacity: int):
    import transformers as T
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    cfg = T.SwitchTransformersConfig(d_model=d, d_ff=f, num_experts=moe.n_experts, expert_capacity=capacity,
                                     router_jitter_noise=0.0, dropout_rate=0.0)
    block = SwitchTransformersSparseMLP(cfg)
    with torch.no_grad():
        block.router.classifier.weight.copy_(moe.router.weight)
        for e, ex in enumerate(moe.experts):
            block.experts[f"expert_{e}"].wi.weight.copy_(ex.up_proj.weight)
            block.experts[f"expert_{e}"].wo.weight.copy_(ex.down_proj.weight)
    return block


def row(kind: str, n: int, d: int, f: int, repeats: int, train: bool) -> list[str]:
    torch.manual_seed(0)
    mixtral = kind == "mixtral"
    k = 2 if mixtral else 1
    cfg = gu.Config(d_model=d, n_heads=8, d_ff=f, n_experts=8, top_k=k, mlp_bias=False,
                    ffn="swiglu" if mixtral else "relu", router="topk_softmax" if mixtral else "switch",
                    capacity_factor=None if mixtral else 1.25, router_group="batch")
    moe = MoE(cfg)
    ideal = make_ffn(cfg, k * f)
    x = torch.randn(1, n, d)
    if mixtral:
        refs = {impl: mixtral_block(moe, d, f, impl) for impl in ("eager", "grouped_mm")}
        refs = {f"transformers {impl}": (lambda b=b: b(x)) for impl, b in refs.items()}
    else:
        # transformers' capacity is per sequence in tokens: the same ceil(n x 1.25 / 8) as ours here (one group)
        ref = switch_block(moe, d, f, moe.capacity(n))
        refs = {"transformers": lambda: ref(x)}
    fns = {"groundup": lambda: moe(x)[0], "ideal": lambda: ideal(x), **refs}
    if train:  # forward + backward of the block alone (transformers' blocks are not timed here)
        xg = x.clone().requires_grad_(True)
        fns = {"groundup": lambda: moe.train()(xg)[0].sum().backward(),
               "ideal": lambda: ideal.train()(xg).sum().backward()}
        times = timed(fns, repeats)
    else:
        moe.eval(), ideal.eval()
        with torch.no_grad():
            times = timed(fns, repeats)
    g, i = times["groundup"], times["ideal"]
    ref_cells = [f"{times[r] * 1e3:,.1f} ms ({times[r] / g:.2f}x)" for r in refs] if not train else []
    ref_cells += ["-"] * (2 - len(ref_cells))  # Switch has no grouped_mm path; backward is not timed for them
    name = "8 experts top-2 SwiGLU" if mixtral else "Switch top-1 cf 1.25"
    return [f"| {name} | {'fwd+bwd' if train else 'fwd'} | {n:,} | {g * 1e3:,.1f} ms | {i * 1e3:,.1f} ms | "
            f"**{g / i:.2f}** | " + " | ".join(ref_cells) + " |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="256,1024,2048,4096,8192")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--expert-d-ff", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    sizes = [int(s) for s in a.tokens.split(",")]
    lines = [f"`{command()}`", "",
             f"d_model {a.d_model}, expert d_ff {a.expert_d_ff}, 8 experts, fp32, {torch.get_num_threads()} threads. "
             "ratio = groundup / ideal (one dense FFN of the active width on the same tokens); the transformers "
             "columns give their time and, in brackets, transformers / groundup (above 1: groundup is faster).", "",
             "| block | pass | tokens | groundup | ideal | ratio | transformers (eager) | transformers (grouped_mm) |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("mixtral", "switch"):
        for train in (False, True):
            for n in sizes:
                lines += row(kind, n, a.d_model, a.expert_d_ff, a.repeats, train)
                print(lines[-1], flush=True)
    emit("MoE dispatch: groundup vs the ideal dense cost and transformers' blocks", lines, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
