"""Alignment end to end on a preference whose truth is known: Goat arithmetic, where the better answer is the
correct one, so every policy can be scored exactly (greedy exact match on held-out problems).

    python bench/align.py --sft out/goat_know/full/checkpoint --data out/goat_know --work out/align \
        --out docs/align.md

1. Preference data from the Goat training problems: per prompt, a ranking of three answers: the reference
   solution, one whose final answer is off by 1-3 (a near miss) and one off by 10-99, ranked in that order
   (so K=3 gives 3 pairs: InstructGPT's K(K-1)/2).
2. SFT -> reward model (`--method rm`), held-out pair accuracy.
3. SFT -> PPO against that reward model; SFT -> DPO on the (correct, near miss) pairs; SFT -> GRPO with the
   exact-match reward function (goat_exact).
4. The table: greedy exact match on the 200 held-out problems, the KL to the SFT model of each policy on
   them, and the training time; curves in docs/align_curves.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groundup.align.run import AlignSettings, run  # noqa: E402
from groundup.cli.arithmetic import exact_match, read_problems  # noqa: E402
from groundup.data.arithmetic import final_answer, kind_of  # noqa: E402


def wrong(completion: str, rng: random.Random, far: bool) -> str:
    """The completion with its final answer changed: by 1-3 (near) or 10-99 (far)."""
    a = final_answer(completion)
    step = rng.randint(10, 99) if far else rng.randint(1, 3)
    step *= rng.choice([-1, 1])
    if " R " in a:
        q, r = a.split(" R ")
        new = f"{int(q) + step} R {r}"
    else:
        new = str(int(a) + step)
    i = completion.rfind(a)
    return completion[:i] + new + completion[i + len(a):]


def make_data(src: Path, work: Path, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)
    train = read_problems(src / "train.jsonl")
    work.mkdir(parents=True, exist_ok=True)
    paths = {k: work / f"{k}.jsonl" for k in ("rankings", "pairs", "prompts")}
    with open(paths["rankings"], "w") as r, open(paths["pairs"], "w") as p, open(paths["prompts"], "w") as q:
        for rec in train:
            near, far = wrong(rec["completion"], rng, False), wrong(rec["completion"], rng, True)
            order = [0, 1, 2]
            rng.shuffle(order)  # completions in a random order, the ranking says which is which
            comps = [[rec["completion"], near, far][i] for i in order]
            ranking = [order.index(i) for i in range(3)]
            r.write(json.dumps({"prompt": rec["prompt"], "completions": comps, "ranking": ranking}) + "\n")
            p.write(json.dumps({"prompt": rec["prompt"], "chosen": rec["completion"], "rejected": near}) + "\n")
            q.write(json.dumps(rec) + "\n")
    return paths


@torch.no_grad()
def kl_to(model, ref, tok, records, batch: int = 50) -> float:
    """KL(pi || pi_sft) per answer: the mean of log pi(y) - log pi_sft(y) over answers y sampled from pi
    (temperature 1), the estimator PPO's penalty uses."""
    from groundup.align.logps import token_logps
    from groundup.data.instruct import SEPARATOR
    from groundup.data.preference import pad_rows
    from groundup.generate import generate

    eos = tok.eos_token_id
    total, n = 0.0, 0
    for i in range(0, len(records), batch):
        prompts = [tok.encode(r["prompt"] + SEPARATOR) for r in records[i: i + batch]]
        out = generate(model, prompts, 64, eos_token_id=eos, pad_token_id=eos, temperature=1.0, seed=i)
        w = max(map(len, prompts))
        rows = []
        for p, ids in zip(prompts, out[:, w:].tolist(), strict=True):
            cut = next((k + 1 for k, t in enumerate(ids) if t == eos), len(ids))
            rows.append((p, ids[:cut]))
        ids, mask = pad_rows(rows, eos)
        a, b = token_logps(model, ids, mask), token_logps(ref, ids, mask)
        total += float((a.summed - b.summed).sum())
        n += len(rows)
    return total / n


def load_policy(sft: str, folder: Path):
    import groundup as gu
    from groundup import peft

    if (folder / "adapter").is_dir():
        model = gu.from_pretrained(sft, dtype=torch.float32)
        peft.load_adapter(model, folder / "adapter")
        return model.eval()
    return gu.from_pretrained(folder / "model", dtype=torch.float32).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft", default="out/goat_know/full/checkpoint")
    ap.add_argument("--data", default="out/goat_know")
    ap.add_argument("--work", default="out/align")
    ap.add_argument("--out", default="docs/align.md")
    ap.add_argument("--stages", nargs="+", default=["rm", "ppo", "dpo", "grpo"])
    ap.add_argument("--rm-steps", type=int, default=400)
    ap.add_argument("--ppo-steps", type=int, default=200)
    ap.add_argument("--dpo-steps", type=int, default=300)
    ap.add_argument("--grpo-steps", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    paths = make_data(Path(args.data), work)
    test = read_problems(Path(args.data) / "test.jsonl")
    runs = {
        "rm": AlignSettings(model=args.sft, method="rm", data=[str(paths["rankings"])], steps=args.rm_steps,
                            batch_size=16, lr=1e-4, warmup=20, val_fraction=0.1, eval_every=50, save_every=10**6,
                            out=str(work / "rm"), quiet=True),
        "ppo": AlignSettings(model=args.sft, method="ppo", data=[str(paths["prompts"])],
                             reward_model=str(work / "rm" / "reward_model"), steps=args.ppo_steps, batch_size=16,
                             epochs=4, lr=3e-5, warmup=10, kl_coef=0.05, max_new_tokens=48, save_every=10**6,
                             out=str(work / "ppo"), quiet=True),
        "dpo": AlignSettings(model=args.sft, method="dpo", data=[str(paths["pairs"])], steps=args.dpo_steps,
                             batch_size=16, lr=3e-5, warmup=20, beta=0.1, eval_every=50, save_every=10**6,
                             out=str(work / "dpo"), quiet=True),
        "grpo": AlignSettings(model=args.sft, method="grpo", data=[str(paths["prompts"])], reward=["goat_exact"],
                              steps=args.grpo_steps, batch_size=4, group=8, lr=3e-5, warmup=10, max_new_tokens=48,
                              save_every=10**6, out=str(work / "grpo"), quiet=True),
    }
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    import groundup as gu
    from groundup.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.sft)
    sft = gu.from_pretrained(args.sft, dtype=torch.float32).eval()
    if "sft" not in results:
        results["sft"] = {"right": exact_match(sft, tok, test)}
    for stage in args.stages:
        t0 = time.perf_counter()
        summary = run(runs[stage], log=print)
        row = {"seconds": time.perf_counter() - t0, "summary": summary}
        if stage == "rm":
            row["accuracy"] = summary["held_out_accuracy"]
        else:
            policy = load_policy(args.sft, work / stage)
            row["right"] = exact_match(policy, tok, test)
            row["kl"] = kl_to(policy, sft, tok, test)
        results[stage] = row
        results_file.write_text(json.dumps(results, indent=2, default=str))
        print(stage, {k: v for k, v in row.items() if k not in ("summary", "right")},
              f"exact {sum(row['right']) / len(row['right']):.1%}" if "right" in row else "")
    write_doc(results, test, args, Path(args.out), work)


def write_doc(results: dict, test: list, args, out: Path, work: Path) -> None:
    kinds = list(dict.fromkeys(kind_of(r) for r in test))
    lines = ["| policy | exact match | " + " | ".join(kinds) + " | KL to SFT (nats/answer) | training s |",
             "|---|---:|" + "---:|" * len(kinds) + "---:|---:|"]
    for name in ("sft", "ppo", "dpo", "grpo"):
        if name not in results:
            continue
        r = results[name]
        per = [sum(ok for ok, t in zip(r["right"], test, strict=True) if kind_of(t) == k)
               / max(1, sum(kind_of(t) == k for t in test)) for k in kinds]
        lines.append(f"| {name} | {sum(r['right']) / len(r['right']):.1%} | " + " | ".join(f"{p:.0%}" for p in per)
                     + f" | {r.get('kl', 0.0):.2f} | {r.get('seconds', 0):.0f} |")
    rm = results.get("rm", {})
    text = ["# Alignment on Goat arithmetic: the preferred answer is the correct one", "",
            f"Command: `python bench/align.py --sft {args.sft} --data {args.data} --work {args.work} --out {args.out}`",
            f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads.", "",
            f"Reward model held-out pair accuracy: {rm.get('accuracy', float('nan')):.1%}", "", *lines, ""]
    out.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
