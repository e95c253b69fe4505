"""`groundup align` and `groundup reward`: parsing only; the pipeline is groundup/align/run.py.

    groundup align SFT_DIR --method dpo --data prefs.jsonl --lora --steps 300 --out out/dpo
    groundup reward train SFT_DIR --data prefs.jsonl --steps 300 --out out/rm
    groundup align SFT_DIR --method ppo --reward-model out/rm/reward_model --data prompts.jsonl --lora --out out/ppo
    groundup align SFT_DIR --method grpo --reward goat_exact --data train.jsonl --lora --out out/grpo
    groundup reward score out/rm/reward_model --data prefs.jsonl
"""

from __future__ import annotations

import argparse
import json

from ..align.run import AlignSettings, run, score_file
from ..utils.files import atomic_write_text
from ..utils.settings import add_flags, merge


def add_align_parser(sub) -> None:
    p = sub.add_parser("align", help="align a decoder-only model folder: reward model (rm), ppo, dpo, ipo, kto, orpo, "
                       "simpo or grpo")
    add_flags(p, AlignSettings)
    p.set_defaults(func=main_align)
    r = sub.add_parser("reward", help="reward models: train one from preferences, or score answers with one")
    rsub = r.add_subparsers(dest="reward_command", required=True)
    t = rsub.add_parser("train", help="train a reward model (the same as `groundup align --method rm`)")
    add_flags(t, AlignSettings, skip=("method",))
    t.set_defaults(func=main_reward_train)
    s = rsub.add_parser("score", help="the reward of each answer of JSONL records, and the pair accuracy")
    s.add_argument("reward_model", help="reward model folder (sequence classification, num_labels=1)")
    s.add_argument("--data", nargs="+", required=True, help="JSONL: pairs, rankings or prompt/completion records")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--out", help="write one JSON line per record here (default: print a summary only)")
    s.set_defaults(func=main_reward_score)


def report(summary: dict, log=print) -> None:
    log("")
    log(f"method            {summary['method']}: {summary['trainable']:,} trainable of {summary['total']:,} parameters")
    log(f"time, peak RSS    {summary['seconds']:.0f} s, {summary['peak_rss_mb']:,.0f} MB")
    if summary.get("val_loss") == summary.get("val_loss"):
        log(f"held-out loss     {summary['val_loss_start']:.4f} at the start -> {summary['val_loss']:.4f} at the end")
    if "held_out_accuracy" in summary:
        log(f"held-out pairs    accuracy {summary['held_out_accuracy']:.1%}, mean margin "
            f"{summary['held_out_margin']:.3f}")
    for key in ("reward_model", "adapter", "merged", "model", "checkpoint", "plot"):
        if key in summary:
            log(f"{key:<17} {summary[key]}")


def main_align(args: argparse.Namespace) -> int:
    report(run(merge(AlignSettings, given=vars(args))))
    return 0


def main_reward_train(args: argparse.Namespace) -> int:
    report(run(merge(AlignSettings, given={**vars(args), "method": "rm"})))
    return 0


def main_reward_score(args: argparse.Namespace) -> int:
    result = score_file(args.reward_model, args.data, batch_size=args.batch_size)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(row) + "\n" for row in result["scores"]))
    rewards = [r for row in result["scores"] for r in row["rewards"]]
    print(f"{len(result['scores']):,} records, {len(rewards):,} answers, mean reward {sum(rewards) / len(rewards):.4f}")
    if result["accuracy"] is not None:
        print(f"pairs: {result['pairs']:,}, accuracy {result['accuracy']:.1%}")
    return 0
