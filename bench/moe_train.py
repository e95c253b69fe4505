"""The course's MoE claim, measured on 2 cores: at the same data, tokens and training FLOPs per token, an
8-expert Switch (top-1) and an 8-expert top-2 model reach a lower validation loss than the dense model of the
same active size; and what the capacity factor (1.0 / 1.25 / 2.0) does to dropped tokens and loss.

Every run is `groundup pretrain` (train/pretrain.run) on the same text, tokenizer, seed, batches and steps:
    dense       d_ff 384 SwiGLU
    switch-cfX  8 experts of d_ff 384, top-1, capacity factor X in training and eval, z-loss 1e-3
    top2        8 experts of d_ff 192, top-2 (the same 384 active FFN width), no capacity limit
The active FFN FLOPs are equal (the routers add d_model x 8 per layer, under 1%).

    python bench/moe_train.py --out docs/moe_bench.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import command, emit

import groundup as gu
from groundup import calc
from groundup.train.pretrain import PretrainSettings, run

BASE = dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=384, max_seq_len=256)
MOE = dict(family="groundup", n_experts=8, router_aux_loss_coef=0.01)


def configs(aux: float = 0.01) -> dict[str, gu.Config]:
    base = gu.Config.preset("tiny-llama", **BASE)
    out = {"dense": base}
    moe = {**MOE, "router_aux_loss_coef": aux}
    for cf in (1.0, 1.25, 2.0):
        out[f"switch-cf{cf:g}"] = base.replace(**moe, top_k=1, router="switch", capacity_factor=cf,
                                                eval_capacity_factor=cf, router_z_loss_coef=1e-3)
    out["top2"] = base.replace(**moe, top_k=2, router="topk_softmax", expert_d_ff=BASE["d_ff"] // 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--max-bytes", type=int, default=6_000_000)
    p.add_argument("--work", default="out/moe_train")
    p.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    p.add_argument("--aux", type=float, default=0.01, help="the MoE runs' load-balancing coefficient alpha")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = configs(a.aux)
    chosen = a.only.split(",") if a.only else list(runs)
    results = {}
    for name in chosen:
        cfg = runs[name]
        spec = work / f"{name}.json"
        spec.write_text(json.dumps(cfg.to_dict()))
        tok = work / "dense" / "tokenizer"
        s = PretrainSettings(model=str(spec), data=["python-stdlib"], max_bytes=a.max_bytes, steps=a.steps,
                             batch_size=a.batch_size, block_size=a.block_size, lr=3e-3, warmup=30,
                             eval_every=max(a.steps // 12, 1), eval_batches=16, save_every=a.steps,
                             out=str(work / name), tokenizer=str(tok) if tok.is_dir() else None, quiet=True,
                             sample_tokens=0, vocab_size=4096)
        print(f"== {name}", flush=True)
        summary = run(s, log=lambda m: print(m, flush=True))
        rows = [json.loads(x) for x in Path(summary["metrics"]).read_text().splitlines() if x.strip()]
        results[name] = (cfg.replace(vocab_size=4096), summary, rows)
        (work / f"{name}.summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for name in list(runs):  # earlier runs' results, when --only reran a subset
        if name not in results and (work / f"{name}.summary.json").is_file():
            summary = json.loads((work / f"{name}.summary.json").read_text())
            rows = [json.loads(x) for x in Path(summary["metrics"]).read_text().splitlines() if x.strip()]
            results[name] = (runs[name].replace(vocab_size=4096), summary, rows)
    lines = [f"`{command()}`", "",
             f"{a.steps} steps x {a.batch_size} rows x {a.block_size} tokens "
             f"({a.steps * a.batch_size * a.block_size:,} training tokens), python-stdlib text ({a.max_bytes:,} "
             "bytes per source), one 4,096-token BPE for all runs, the same seed and batch order. Dropped = the "
             "mean over training steps of the tokens no expert processed; max load = the busiest expert's "
             "share of routing choices over an even share (1.0 = balanced), mean over steps. Load-balancing "
             f"coefficient alpha = {a.aux:g} in the MoE runs.", "",
             "| run | params | active | train FLOPs / token | val loss | val ppl | dropped | max load | tok/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    dense_loss = results["dense"][1]["val_loss"] if "dense" in results else None
    for name, (cfg, summary, rows) in results.items():
        steps = [r for r in rows if "loss" in r]
        dropped = [r["moe_dropped"] for r in steps if "moe_dropped" in r]
        load = [r["moe_max_load"] for r in steps if "moe_max_load" in r]
        b = calc.param_breakdown(cfg)
        gap = f" ({summary['val_loss'] - dense_loss:+.3f})" if dense_loss is not None and name != "dense" else ""
        lines.append(f"| {name} | {calc.human(b['total'])} | {calc.human(b['active'])} | "
                     f"{calc.human(calc.flops_per_token(cfg, a.block_size, training=True))} | "
                     f"{summary['val_loss']:.3f}{gap} | {summary['val_ppl']:.2f} | "
                     + (f"{sum(dropped) / len(dropped):.1%}" if dropped else "-") + " | "
                     + (f"{sum(load) / len(load):.2f}" if load else "-") + " | "
                     f"{summary['tokens'] / summary['seconds']:,.0f} |")
    stem = Path(a.out).stem if a.out else "moe_bench"
    plot(results, Path(a.out).with_name(f"{stem}_curves.png") if a.out else work / "moe_curves.png")
    for name in ("switch-cf1.25", "top2"):
        if a.out and (work / name / "experts.png").is_file():
            shutil.copy(work / name / "experts.png", Path(a.out).with_name(f"{stem}_experts_{name}.png"))
    emit("MoE vs dense at equal active compute", lines, a.out)
    return 0


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (_, _, rows) in results.items():
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        ax.plot(*zip(*val, strict=True), "o-", ms=3, label=name, lw=1.5 if name == "dense" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation cross-entropy (nats/token)")
    ax.set_ylim(top=min(6.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
