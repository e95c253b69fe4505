"""Context extension, measured: a copy task trained at length L, evaluated at L and 2L.

    python bench/context_extension.py [--length 64] [--steps 600] [--tune-steps 40] [--out docs/context_extension.md]

Each sequence is BOS, n random tokens, SEP, the same n tokens again (2n + 2 = length). A small model
learns to copy at length L; its accuracy on the copied half is then measured at L and at 2L (teacher
forcing, 512 fresh sequences) for RoPE as trained, RoPE with linear position interpolation (Chen et al.,
2023) and NTK-aware scaling (bloc97, 2023), each at factor 2 and without further training, the same two
after a short fine-tune at 2L, and ALiBi (Press et al., 2022) as trained. The copy reads the token n + 1
places back, a distance the model never saw during training once the sequence is longer than L: this is
what the scalings are for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from report import command, emit
from tqdm import tqdm

import groundup as gu

VOCAB, PAD, BOS, SEP = 64, 0, 1, 2


def copy_batch(batch: int, length: int, g: torch.Generator, *, vary: bool = False) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """ids [B, length] and targets [B, length] (-100 except where the copy is predicted). Each row is BOS,
    n tokens, SEP, the n tokens again, n = (length - 2) // 2; with ``vary`` n is drawn from 1..that per
    row and the row is filled up with PAD (so no fixed distance between a token and its copy is learnt)."""
    top = (length - 2) // 2
    ns = torch.randint(1, top + 1, (batch,), generator=g) if vary else torch.full((batch,), top)
    ids = torch.full((batch, length), PAD)
    targets = torch.full((batch, length), -100)
    for b, n in enumerate(ns.tolist()):
        x = torch.randint(3, VOCAB, (n,), generator=g)
        ids[b, : 2 * n + 2] = torch.cat([torch.tensor([BOS]), x, torch.tensor([SEP]), x])
        targets[b, n + 1: 2 * n + 1] = x  # position j predicts token j + 1: SEP predicts x1, and so on
    return ids, targets


def train(model: gu.CausalLM, length: int, steps: int, lr: float, seed: int, label: str,
          every: int = 0) -> list[float]:
    """AdamW with a one-cycle schedule; with ``every``, the accuracy at ``length`` before the first step
    and after each ``every`` steps."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    curve = [accuracy(model, length)] if every else []
    model.train()
    for step in tqdm(range(1, steps + 1), desc=label, leave=False, disable=None):
        ids, targets = copy_batch(32, length, g, vary=True)
        loss = model(ids, targets=targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if every and step % every == 0:
            curve.append(accuracy(model, length))
            model.train()
    model.eval()
    return curve


@torch.no_grad()
def accuracy(model: gu.CausalLM, length: int, seed: int = 123) -> float:
    """Fraction of copied tokens predicted right (argmax), over 512 sequences."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    right = total = 0
    for _ in range(8):
        ids, targets = copy_batch(64, length, g)
        pred = model(ids).argmax(-1)
        keep = targets != -100
        right += int((pred[keep] == targets[keep]).sum())
        total += int(keep.sum())
    return right / total


def scaled(model: gu.CausalLM, kind: str, factor: float, max_len: int) -> gu.CausalLM:
    model.config = model.config.replace(rope_scaling=kind, rope_scaling_factor=factor, max_seq_len=max_len)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--tune-steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    L = args.length
    torch.manual_seed(args.seed)
    t0 = time.time()
    base = dict(vocab_size=VOCAB, d_model=128, n_layers=2, n_heads=4, d_ff=256, max_seq_len=L, dropout=0.0)
    rows: list[tuple[str, float, float]] = []

    rope = gu.CausalLM(gu.Config(pos="rope", **base))
    train(rope, L, args.steps, args.lr, args.seed, "train rope")
    trained = {k: v.clone() for k, v in rope.state_dict().items()}
    every = max(1, args.tune_steps // 4)
    methods = (("none", 1.0, "RoPE, as trained"), ("linear", 2.0, "RoPE, position interpolation x2"),
               ("ntk", 2.0, "RoPE, NTK-aware scaling x2"))
    rows = []
    for kind, factor, label in methods:
        rope.load_state_dict(trained)
        model = scaled(rope, kind, factor, 2 * L)
        at_l = accuracy(model, L)
        curve = train(model, 2 * L, args.tune_steps, args.lr / 3, args.seed + 1, f"tune {kind}", every)
        rows.append((label, at_l, curve, accuracy(model, L)))
    alibi = gu.CausalLM(gu.Config(pos="alibi", **base))
    train(alibi, L, args.steps, args.lr, args.seed, "train alibi")
    rows.append(("ALiBi, as trained (no scaling)", accuracy(alibi, L), [accuracy(alibi, 2 * L)], None))

    steps = [f"{i * every} steps" for i in range(args.tune_steps // every + 1)]
    lines = [f"Copy-task accuracy (argmax over the copied half, 512 fresh sequences). Trained {args.steps} steps "
             f"at L = {L}; then fine-tuned at 2L = {2 * L} from the same weights, with the accuracy at 2L after "
             f"each number of fine-tuning steps ({time.time() - t0:.0f} s on this machine).", "",
             f"| model | at L | at 2L, {' / '.join(steps)} | at L after tuning |", "|---|---:|---:|---:|"]
    for label, at_l, curve, after in rows:
        after_s = f"{after:.1%}" if after is not None else "-"
        lines.append(f"| {label} | {at_l:.1%} | {' / '.join(f'{a:.1%}' for a in curve)} | {after_s} |")
    lines += ["", f"`{command()}`"]
    emit("Context extension: a copy task trained at L, evaluated at 2L", lines, args.out)


if __name__ == "__main__":
    main()
