"""Speculative decoding: a draft model's speed-up of greedy decoding, groundup vs transformers' assisted
generation, same target and draft, same prompts, one process.

    python bench/speculative.py [--target DIR] [--draft DIR] [--ks 2 4 6] [--new 64] [--out docs/bench_speculative.md]

Defaults: the draft is what `make run` trains (out/run/checkpoint: a ~5M-parameter Llama on the Python
standard library), the target a ~23M-parameter model trained on the same data with the same tokenizer:

    groundup pretrain --config configs/pretrain-stdlib.yaml --tokenizer out/run/tokenizer --d-model 512 \\
        --n-layers 8 --n-heads 8 --n-kv-heads 4 --d-ff 1376 --steps 240 --lr 2e-3 --min-lr 2e-4 --out out/spec/target

Prompts are the first `--prompt-tokens` tokens of `def` lines of standard-library files, batch 1, fp32.
For each number of guesses k: plain greedy and speculative greedy tokens/s for both libraries (transformers
with `assistant_model`, a constant k and no confidence cut-off, so both run the same algorithm), the
fraction of guesses the target accepted and the tokens per target forward. Outputs are checked to be the
plain greedy tokens. Each cell is the total time over all prompts, the median of `--repeats` runs
alternating with the other library's.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from report import alternate, command, emit

import groundup as gu
from groundup.generate import SpeculativeStats


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """n prompts: from `def` lines of standard-library modules taken at an even stride, `length` tokens."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out: list[list[int]] = []
    for path in files[:: max(1, len(files) // (4 * n))]:
        text = path.read_text(encoding="utf-8", errors="replace")
        at = text.find("\n    def ")
        if at < 0:
            continue
        ids = tokenizer.encode(text[at + 1:])[:length]
        if len(ids) == length:
            out.append(ids)
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="out/spec/target/checkpoint")
    ap.add_argument("--draft", default="out/run/checkpoint")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--confidences", type=float, nargs="+", default=[0.0, 0.4],
                    help="stop a round's drafting below this draft probability (0: always k; 0.4 is transformers' "
                    "default)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for name in ("target", "draft"):
        if not (Path(getattr(args, name)) / "config.json").is_file():
            sys.exit(f"--{name} {getattr(args, name)}: no model folder there; make it with the commands in "
                     "this script's docstring (python bench/speculative.py --help)")
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    tok = gu.Tokenizer.from_pretrained(args.draft)
    target, draft = gu.from_pretrained(args.target).eval(), gu.from_pretrained(args.draft).eval()
    hf_target = transformers.AutoModelForCausalLM.from_pretrained(args.target).eval()
    hf_draft = transformers.AutoModelForCausalLM.from_pretrained(args.draft).eval()
    rows = prompts(tok, args.prompts, args.prompt_tokens)
    n_tokens = len(rows) * args.new

    def ours(draft_model=None, k=4, stats=None, confidence=0.0):
        return [gu.generate(target, [p], args.new, draft_model=draft_model, num_draft_tokens=k, stats=stats,
                            draft_confidence=confidence) for p in rows]

    def theirs(assistant=None):
        with torch.no_grad():
            return [hf_target.generate(torch.tensor([p]), max_new_tokens=args.new, min_new_tokens=args.new,
                                       do_sample=False, assistant_model=assistant, pad_token_id=0)
                    for p in rows]

    plain = ours()
    t_ours, t_theirs = alternate(ours, theirs, args.repeats)
    same_ref = all(torch.equal(a, b) for a, b in zip(plain, theirs(), strict=True))
    table = []
    for conf in args.confidences:
        for k in args.ks:
            stats = SpeculativeStats()
            same = all(torch.equal(a, b) for a, b in zip(plain, ours(draft, k, stats, conf), strict=True))
            hf_draft.generation_config.update(num_assistant_tokens=k, num_assistant_tokens_schedule="constant",
                                              assistant_confidence_threshold=conf)
            same_hf = all(torch.equal(a, b) for a, b in zip(plain, theirs(hf_draft), strict=True))
            t_spec, t_assist = alternate(lambda k=k, conf=conf: ours(draft, k, None, conf),
                                         lambda: theirs(hf_draft), args.repeats)
            table.append((k, conf, stats, t_spec, t_assist, same and same_hf))
            print(k, conf, stats, f"ours {n_tokens / t_spec:.1f} tok/s, transformers {n_tokens / t_assist:.1f} tok/s",
                  flush=True)

    def n_params(m) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    lines = [f"Command: `{command()}`", "",
             f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} "
             f"threads, fp32, batch 1. Target {args.target} ({n_params(target):.1f}M parameters), draft "
             f"{args.draft} ({n_params(draft):.1f}M). {len(rows)} prompts of {args.prompt_tokens} tokens from "
             f"standard-library `def` lines, {args.new} new tokens each, greedy.", "",
             f"Plain greedy: groundup {n_tokens / t_ours:.1f} tok/s, transformers {n_tokens / t_theirs:.1f} tok/s "
             f"(same tokens: {'yes' if same_ref else 'NO'}).", "",
             "| k guesses | confidence cut | accepted | tokens / target pass | groundup tok/s | speed-up vs plain "
             "| transformers assisted tok/s | its speed-up | groundup / transformers | same tokens |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k, conf, stats, t_spec, t_assist, same in table:
        lines.append(f"| {k} | {conf:g} | {stats.acceptance_rate:.0%} | {stats.tokens_per_round:.2f} | "
                     f"{n_tokens / t_spec:.1f} | "
                     f"{t_ours / t_spec:.2f}x | {n_tokens / t_assist:.1f} | {t_theirs / t_assist:.2f}x | "
                     f"{t_assist / t_spec:.2f}x | {'yes' if same else 'NO'} |")
    emit("Speculative decoding benchmark", lines, args.out)


if __name__ == "__main__":
    main()
