"""Memory and time of PPO iterations: LoRA (policy, reference and value trunk share one frozen base; the
reference is the base with the adapter off, the values a head on the policy's hidden states) against
separate full copies (a trained policy, a frozen reference copy, and a trained value model copied from the
reward model, as trl 1.12 does), on the same model, prompts and settings.

    python bench/align_ppo_memory.py --model /tmp/smol32 --work out/ppo_mem

Each configuration runs in its own process (`groundup align --method ppo`), so its peak resident memory
is its own; time is the training loop's (rollouts + updates) per PPO iteration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from report import machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smol32")
    ap.add_argument("--work", default="out/ppo_mem")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import groundup as gu
    from groundup.align import RewardModel

    rm_folder = work / "reward_model"
    if not (rm_folder / "config.json").is_file():
        torch.manual_seed(0)
        RewardModel(gu.from_pretrained(args.model, dtype=torch.float32)).save_pretrained(rm_folder)
        gu.Tokenizer.from_pretrained(args.model).save_pretrained(rm_folder)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write a short sentence about the number {i}."}) + "\n"
                               for i in range(32)))
    rows = []
    for name, extra in (("LoRA r=16 (one base: policy, reference = adapter off, value head)",
                         ["--lora", "--r", "16", "--target-modules", "q_proj", "k_proj", "v_proj", "o_proj"]),
                        ("full copies (policy, frozen reference, separate value model)",
                         ["--value-model", "separate"])):
        out = work / ("lora" if "LoRA" in name else "full")
        cmd = [sys.executable, "-m", "groundup", "align", args.model, "--method", "ppo", "--data", str(prompts),
               "--reward-model", str(rm_folder), "--steps", str(args.iterations * args.epochs), "--batch-size",
               str(args.batch_size), "--epochs", str(args.epochs), "--max-new-tokens", str(args.max_new_tokens),
               "--lr", "1e-5", "--warmup", "1", "--save-every", "1000000", "--separator", " ", "--quiet",
               "--out", str(out), *extra]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        s = json.loads((out / "summary.json").read_text())
        rows.append({"config": name, "trainable": s["trainable"], "total": s["total"],
                     "seconds_per_iteration": s["seconds"] / args.iterations, "peak_rss_mb": s["peak_rss_mb"]})
    lora, full = rows
    lines = [f"Model {args.model}, {args.batch_size} prompts per rollout, {args.max_new_tokens} new tokens, "
             f"{args.epochs} PPO epochs, {args.iterations} iterations, fp32; {machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}.", "",
             "| configuration | trainable parameters | parameters of the trained module | peak RSS MB "
             "| s / iteration |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['trainable']:,} | {r['total']:,} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['seconds_per_iteration']:.1f} |")
    lines += ["", f"Full copies / LoRA: memory {full['peak_rss_mb'] / lora['peak_rss_mb']:.2f}x, time "
              f"{full['seconds_per_iteration'] / lora['seconds_per_iteration']:.2f}x."]
    (work / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
