"""A FrugalGPT cascade and a router on the Goat arithmetic task: accuracy against cost, with thresholds fitted
on a validation set and everything reported on the held-out test set.

    python bench/cascade.py --lora-base out/run_know/checkpoint --lora out/goat_know/lora/adapter
                            --full out/goat_know/full/checkpoint --large FOLDER [--test out/goat_know/test.jsonl]
                            [--val 200] [--shots 4] [--out docs/bench_cascade.md] [--plot docs/serve_cascade.png]

Stages, cheapest first: the LoRA fine-tune on the 5M base, the fully fine-tuned 5M model (both zero-shot in
the fine-tuning format), and a larger general model (e.g. SmolLM2-135M-Instruct) prompted with --shots solved
training problems. Each answers every validation and test problem once, greedily, through the serving
engine (serve/engine.py). Cost = parameters x tokens processed (prompt and answer), a FLOP proxy, averaged
per problem. Scorers: the answer's mean token log-probability, and a logistic answer classifier
(serve/cascade.py) cross-fitted on two halves of the validation set. The validation problems are fresh
Goat problems (seed 1000) that are neither test nor training problems.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from report import command, emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lora-base", required=True)
    ap.add_argument("--lora", required=True)
    ap.add_argument("--full", required=True)
    ap.add_argument("--large", required=True)
    ap.add_argument("--test", default="out/goat_know/test.jsonl")
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--train", type=int, default=2800, help="the training set's size (to keep validation apart)")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--digits", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()

    import groundup as gu
    from groundup.cli.arithmetic import read_problems
    from groundup.data.arithmetic import dataset, final_answer
    from groundup.data.instruct import SEPARATOR
    from groundup.serve import Engine
    from groundup.serve.cascade import AnswerClassifier, EngineStage, Router, answer_all, fit, frontier, simulate

    torch.set_num_threads(2)
    test = read_problems(args.test)
    train = dataset(args.train, seed=0, digits=args.digits, exclude={r["prompt"] for r in test})
    val = dataset(args.val, seed=1000, digits=args.digits, exclude={r["prompt"] for r in test + train})
    shots = "".join(r["prompt"] + SEPARATOR + r["completion"].strip() + "\n\n" for r in train[: args.shots])

    def load(folder):
        return gu.from_pretrained(folder).eval(), gu.Tokenizer.from_pretrained(folder)

    small, small_tok = load(args.lora_base)
    full, full_tok = load(args.full)
    large, large_tok = load(args.large)
    longest = max(len(small_tok.encode(r["completion"], add_special_tokens=False)) for r in test + val) + 2
    stages = [
        EngineStage("goat LoRA (5M)", Engine(small, small_tok, adapters={"goat": args.lora}), small_tok,
                    template="{prompt}" + SEPARATOR, adapter="goat", max_tokens=longest, stop=["\n\n"]),
        EngineStage("goat full (5M)", Engine(full, full_tok), full_tok, template="{prompt}" + SEPARATOR,
                    max_tokens=longest, stop=["\n\n"]),
        EngineStage(f"{Path(args.large).name} {args.shots}-shot", Engine(large, large_tok), large_tok,
                    template=shots + "{prompt}" + SEPARATOR, max_tokens=longest, stop=["\n\n"]),
    ]
    names = [s.name for s in stages]

    def table(records):
        prompts = [r["prompt"] for r in records]
        answers = answer_all(stages, prompts)
        def ok(text: str, completion: str) -> bool:
            return final_answer(text) is not None and final_answer(text) == final_answer(completion)

        pairs = zip(records, answers, strict=True)
        right = torch.tensor([[ok(a.text, r["completion"]) for a in row] for r, row in pairs], dtype=torch.long)
        scores = torch.tensor([[a.score for a in row] for row in answers])
        costs = torch.tensor([[a.cost for a in row] for row in answers])
        return prompts, answers, right, scores, costs

    vp, va, vr, vs, vc = table(val)
    tp, ta, tr, ts, tc = table(test)
    print("validation accuracy per stage:", [f"{x:.3f}" for x in vr.float().mean(0).tolist()], flush=True)

    # the answer classifier, cross-fitted: each half of the validation set is scored by a classifier of the other
    half = len(vp) // 2
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    vs_clf = torch.zeros_like(vs)
    ts_clf = torch.zeros_like(ts)
    for s in range(len(stages) - 1):
        for fit_part, score_part in folds:
            clf = AnswerClassifier().fit(vp[fit_part], [row[s] for row in va[fit_part]],
                                         vr[fit_part, s].bool().tolist())
            vs_clf[score_part, s] = clf(vp[score_part], [row[s] for row in va[score_part]])
        clf = AnswerClassifier().fit(vp, [row[s] for row in va], vr[:, s].bool().tolist())
        ts_clf[:, s] = clf(tp, [row[s] for row in ta])

    budget = float(vc[:, -1].mean())
    rows = []
    for s, name in enumerate(names):
        rows.append((f"{name} alone", float(tr[:, s].float().mean()), float(tc[:, s].mean()), "-"))
    curves = {}
    for label, v_scores, t_scores in (("mean logprob", vs, ts), ("answer classifier", vs_clf, ts_clf)):
        chosen = fit(v_scores, vr, vc, budget=budget)
        _, right, paid = simulate(t_scores, tr, tc, chosen.thresholds)
        stage, _, _ = simulate(t_scores, tr, tc, chosen.thresholds)
        share = torch.bincount(stage, minlength=len(stages)).float() / len(stage)
        rows.append((f"cascade, {label} (thresholds {', '.join(f'{t:.3g}' for t in chosen.thresholds)})",
                     float(right.float().mean()), float(paid.mean()),
                     " / ".join(f"{x:.0%}" for x in share.tolist())))
        points = []
        for f in frontier(v_scores, vr, vc):
            _, r_, p_ = simulate(t_scores, tr, tc, f.thresholds)
            points.append((float(p_.mean()), float(r_.float().mean())))
        curves[label] = (points, (float(paid.mean()), float(right.float().mean())))
    router = Router(len(stages)).fit(vp, Router.labels(vr, vc))
    pick = router(tp)
    r_right = tr.gather(1, pick[:, None])[:, 0]
    r_cost = tc.gather(1, pick[:, None])[:, 0]
    share = torch.bincount(pick, minlength=len(stages)).float() / len(pick)
    rows.append(("router (hashed n-gram classifier on the prompt)", float(r_right.float().mean()),
                 float(r_cost.mean()), " / ".join(f"{x:.0%}" for x in share.tolist())))

    unit = float(tc[:, -1].mean())
    lines = [f"Command: `{command()}`", "",
             f"{len(test)} test problems ({args.test}); thresholds fitted on {len(val)} fresh validation problems "
             f"to the best accuracy at a mean cost no higher than the largest model's alone. Cost: parameters x "
             f"tokens per problem, shown relative to the largest model alone ({unit:.3g}).", "",
             "| policy | test exact match | mean cost (x largest) | answered by " + " / ".join(names) + " |",
             "|---|---:|---:|---|"]
    for name, acc, cost, share_ in rows:
        lines.append(f"| {name} | {acc:.1%} | {cost / unit:.3f} | {share_} |")
    emit("A FrugalGPT cascade and a router on Goat arithmetic", lines, args.out)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s, name in enumerate(names):
            ax.scatter([float(tc[:, s].mean()) / unit], [float(tr[:, s].float().mean())], marker="s", s=50,
                       label=f"{name} alone")
        for label, (points, chosen) in curves.items():
            ax.plot([c / unit for c, _ in points], [a for _, a in points], "-o", ms=3, label=f"cascade ({label})")
            ax.scatter([chosen[0] / unit], [chosen[1]], marker="*", s=180, zorder=5)
        ax.scatter([float(r_cost.mean()) / unit], [float(r_right.float().mean())], marker="^", s=80, label="router")
        ax.set_xlabel("mean cost per problem (x the largest model alone)")
        ax.set_ylabel("test exact match")
        ax.set_title("Goat arithmetic: accuracy against cost (stars: fitted thresholds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
