"""Alignment end to end on Goat arithmetic with two preferences whose truth is known exactly.

    python bench/align.py --sft out/goat_know/full/checkpoint --data out/goat_know --work out/align \
        --out docs/align_bench.md

1. A hidden labeler's rule for RLHF (reward model, PPO, DPO): of two answers to a training problem that
   differ only in their last digit (the reference answer and the same with that digit moved by one), the
   labeler prefers the one whose last digit is even. A policy's true score is the share of its greedy
   answers to the 200 held-out problems that end in an even digit.
2. Correctness for GRPO: the verifiable reward is the exact match of the final answer (goat_exact), and the
   true score is the exact match of greedy answers (docs/goat.md's metric).
3. SFT -> reward model (`--method rm`, held-out pair accuracy); SFT -> PPO against it; SFT -> DPO on the
   same pairs; SFT -> GRPO. Each policy's KL to the SFT model is measured on its own samples.

A reward model that judges correctness itself (the reference answer against a near miss) was tried and
does not learn on this 5M-parameter model: 50-53% held-out pair accuracy after 250 steps (docs/align.md).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from report import machine

from groundup.align.run import AlignSettings, run
from groundup.cli.arithmetic import exact_match, read_problems
from groundup.data.arithmetic import kind_of


def last_digit_moved(completion: str, rng: random.Random) -> str:
    """The completion with its last digit moved by one (up or down, staying a digit)."""
    d = int(completion[-1])
    new = d + 1 if d == 0 else d - 1 if d == 9 else d + rng.choice([-1, 1])
    return completion[:-1] + str(new)


def even_end(text: str) -> bool:
    """The hidden rule: the answer's last character is an even digit."""
    text = text.strip()
    return bool(text) and text[-1] in "02468"


def make_data(src: Path, work: Path, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)
    train = read_problems(src / "train.jsonl")
    work.mkdir(parents=True, exist_ok=True)
    paths = {k: work / f"{k}.jsonl" for k in ("pairs", "prompts")}
    with open(paths["pairs"], "w") as p, open(paths["prompts"], "w") as q:
        for rec in train:
            a, b = rec["completion"], last_digit_moved(rec["completion"], rng)
            chosen, rejected = (a, b) if even_end(a) else (b, a)
            p.write(json.dumps({"prompt": rec["prompt"], "chosen": chosen, "rejected": rejected}) + "\n")
            q.write(json.dumps(rec) + "\n")
    return paths


def greedy_answers(model, tok, records, batch: int = 50) -> list[str]:
    from groundup.data.instruct import SEPARATOR
    from groundup.generate import generate

    eos = tok.eos_token_id
    out_texts = []
    with torch.no_grad():
        for i in range(0, len(records), batch):
            prompts = [tok.encode(r["prompt"] + SEPARATOR) for r in records[i: i + batch]]
            out = generate(model, prompts, 64, eos_token_id=eos, pad_token_id=eos)
            w = max(map(len, prompts))
            out_texts += [tok.decode([t for t in ids if t != eos], skip_special_tokens=True)
                          for ids in out[:, w:].tolist()]
    return out_texts


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
    ap.add_argument("--out", default="docs/align_bench.md")
    ap.add_argument("--stages", nargs="*", default=["rm", "ppo", "dpo", "dpo_sft", "grpo"],
                    help="none: rewrite the page only")
    ap.add_argument("--rm-steps", type=int, default=300)
    ap.add_argument("--ppo-steps", type=int, default=200)
    ap.add_argument("--dpo-steps", type=int, default=200)
    ap.add_argument("--grpo-steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    paths = make_data(Path(args.data), work)
    test = read_problems(Path(args.data) / "test.jsonl")
    runs = {
        "rm": AlignSettings(model=args.sft, method="rm", data=[str(paths["pairs"])], steps=args.rm_steps,
                            batch_size=16, lr=1e-4, warmup=20, val_fraction=0.1, eval_every=50, save_every=10**6,
                            out=str(work / "rm"), quiet=True),
        "ppo": AlignSettings(model=args.sft, method="ppo", data=[str(paths["prompts"])],
                             reward_model=str(work / "rm" / "reward_model"), steps=args.ppo_steps, batch_size=16,
                             epochs=4, lr=5e-5, warmup=10, kl_coef=0.05, max_new_tokens=48, save_every=10**6,
                             out=str(work / "ppo"), quiet=True),
        "dpo": AlignSettings(model=args.sft, method="dpo", data=[str(paths["pairs"])], steps=args.dpo_steps,
                             batch_size=16, lr=5e-5, warmup=20, beta=0.1, eval_every=50, save_every=10**6,
                             out=str(work / "dpo"), quiet=True),
        "dpo_sft": AlignSettings(model=args.sft, method="dpo", data=[str(paths["pairs"])], steps=args.dpo_steps,
                                 batch_size=16, lr=5e-5, warmup=20, beta=0.1, sft_weight=1.0, eval_every=50,
                                 save_every=10**6, out=str(work / "dpo_sft"), quiet=True),
        "grpo": AlignSettings(model=args.sft, method="grpo", data=[str(paths["prompts"])], reward=["goat_exact"],
                              steps=args.grpo_steps, batch_size=8, group=8, epochs=2, temperature=0.7, lr=1e-4,
                              warmup=10, max_new_tokens=48,
                              save_every=10**6, out=str(work / "grpo"), quiet=True),
    }
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    import groundup as gu
    from groundup.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.sft)
    sft = gu.from_pretrained(args.sft, dtype=torch.float32).eval()
    if "sft" not in results:
        results["sft"] = {"right": exact_match(sft, tok, test),
                          "even": [even_end(t) for t in greedy_answers(sft, tok, test)]}
    for stage in args.stages:
        t0 = time.perf_counter()
        summary = run(runs[stage], log=print)
        row = {"seconds": time.perf_counter() - t0, "summary": summary}
        if stage == "rm":
            row["accuracy"] = summary["held_out_accuracy"]
        else:
            policy = load_policy(args.sft, work / stage)
            row["right"] = exact_match(policy, tok, test)
            row["even"] = [even_end(t) for t in greedy_answers(policy, tok, test)]
            row["kl"] = kl_to(policy, sft, tok, test)
        results[stage] = row
        results_file.write_text(json.dumps(results, indent=2, default=str))
        print(stage, {k: v for k, v in row.items() if k not in ("summary", "right", "even")},
              f"exact {sum(row['right']) / len(row['right']):.1%}, even {sum(row['even']) / len(row['even']):.1%}"
              if "right" in row else "")
    curves(work, Path(args.out).with_name("align_curves.png"))
    write_doc(results, test, args, Path(args.out), work)


def curves(work: Path, png: Path) -> None:
    """Reward-model accuracy, PPO's score and KL, DPO's held-out margin, GRPO's reward: one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(run: str, key: str) -> list[tuple[int, float]]:
        path = work / run / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]

    panels = [("reward model: held-out pair accuracy", [("rm", "val_accuracy", "held out"),
                                                        ("rm", "accuracy", "train")]),
              ("PPO: reward-model score per answer", [("ppo", "score", "score")]),
              ("PPO: KL to the SFT model per answer", [("ppo", "kl", "KL")]),
              ("DPO: held-out chosen log-prob per answer", [("dpo", "val_logps_chosen", "DPO"),
                                                           ("dpo_sft", "val_logps_chosen", "DPO + SFT term")]),
              ("GRPO: exact-match reward of samples", [("grpo", "reward", "reward")])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3))
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for name, key, label in lines:
            pts = series(name, key)
            if pts:
                ax.plot(*zip(*pts, strict=True), lw=1, marker="o" if key.startswith("val") else None, ms=3,
                        label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_doc(results: dict, test: list, args, out: Path, work: Path) -> None:
    kinds = list(dict.fromkeys(kind_of(r) for r in test))
    lines = ["| policy | even last digit (the labeler's rule) | exact match | " + " | ".join(kinds)
             + " | KL to SFT (nats/answer) | training s |", "|---|---:|---:|" + "---:|" * len(kinds) + "---:|---:|"]
    for name in ("sft", "ppo", "dpo", "dpo_sft", "grpo"):
        if name not in results:
            continue
        r = results[name]
        per = [sum(ok for ok, t in zip(r["right"], test, strict=True) if kind_of(t) == k)
               / max(1, sum(kind_of(t) == k for t in test)) for k in kinds]
        lines.append(f"| {name} | {sum(r['even']) / len(r['even']):.1%} | {sum(r['right']) / len(r['right']):.1%} | "
                     + " | ".join(f"{p:.0%}" for p in per)
                     + f" | {r.get('kl', 0.0):.2f} | {r.get('seconds', 0):.0f} |")
    rm = results.get("rm", {})
    text = ["# Alignment on Goat arithmetic: a hidden labeler's rule (RM, PPO, DPO), correctness (GRPO)", "",
            f"Command: `python bench/align.py --sft {args.sft} --data {args.data} --work {args.work} --out {args.out}`",
            f"Machine: {machine()}; torch {torch.__version__}, 2 threads.", "",
            f"Reward model held-out pair accuracy: {rm.get('accuracy', float('nan')):.1%}", "", *lines, ""]
    out.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
