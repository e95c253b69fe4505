"""The one training loop every trainer uses (pretraining, fine-tuning, alignment, CLIP, LLaVA, speech ...), on
one process or many (DDP, or FSDP sharding).

Per optimizer step: set the scheduled learning rate, accumulate gradients over micro-batches (each a
slice of the global batch, so a run's result depends on the global batch only), clip, step. The loss is
whatever the run's TrainObjective returns for a micro-batch (train/objective.py). A
non-finite loss stops the run before the optimizer touches the weights, naming the step; the last
checkpoint on disk stays as it was. Only rank 0 writes checkpoints, metrics and plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..models.common import trusted_inputs
from ..nn.block import Block
from ..utils.files import atomic_file
from .checkpoint import DTensor, load_checkpoint, save_checkpoint
from .experts import ExpertLog, plot_experts
from .objective import Objective, TrainObjective
from .optim import OPTIMIZERS, lr_at, make_optimizer


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what is kept."""


@dataclass
class TrainArgs:
    """Settings of a pretraining run (every field has a default a tiny run can use)."""

    out_dir: str = "out"
    steps: int = 200
    batch_size: int = 16  # sequences per optimizer step, over all processes
    micro_batch: int | None = None  # sequences per forward on one process (default: batch_size / world)
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    seed: int = 0
    activation_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1.3x compute
    compile: bool = False  # torch.compile the model (inductor; needs a C++ compiler on CPU)
    fsdp: bool = False  # with several processes: shard parameters, gradients and AdamW state (FSDP2) over them
    optimizer: str = "adamw"  # adamw | adamw8bit (both moments in 8 bits: 2 bytes of state per weight, not 8)
    progress: bool = True
    name: str = "pretrain"  # the progress bar's label

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "save_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
        if not self.lr > 0 or self.min_lr < 0:
            raise ValueError(f"lr={self.lr} must be > 0 and min_lr={self.min_lr} >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if self.optimizer == "adamw8bit" and self.fsdp:
            raise ValueError("optimizer='adamw8bit' keeps whole-tensor blocks, not FSDP shards; use adamw with fsdp")


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_model(model: torch.nn.Module) -> int:
    """FSDP (Zhao et al., 2023; PyTorch's fully_shard): each transformer block, then the rest, becomes a unit
    whose parameters, gradients and optimizer state are split over the processes and gathered only while
    the unit runs. Memory per process falls with the number of processes; the arithmetic is DDP's."""
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        fully_shard(block)
    fully_shard(model)  # embeddings, final norm, head (tied weights stay together in this unit)
    return len(blocks) + 1


def lm_loss(model: torch.nn.Module, batch: Any, objective: TrainObjective, index: int,
            rows: list[int] | None = None) -> torch.Tensor:
    """The mean loss of one micro-batch under the run's objective (rows: the micro-batch's rows of the batch)."""
    return objective.loss(model, batch, index, rows=rows)[0]


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch on ``device``: an (inputs, targets) pair of tensors, or a batch object with ``to``."""
    if isinstance(batch, tuple):
        return tuple(t.to(device) for t in batch)
    return batch.to(device)


def batch_tokens(batch: Any) -> int:
    """Token positions in a batch (padding included): the rows times their length."""
    return batch[0].numel() if isinstance(batch, tuple) else batch.tokens


@torch.no_grad()
def evaluate(model: torch.nn.Module, mixture, micro_batch: int, max_batches: int, dtype: str,
             objective: TrainObjective | None = None) -> float:
    """Mean validation loss per predicted token (or per item the objective counts) over the mixture's fixed
    validation batches (nan when it has none). Masks and spans are seeded by batch index, so every
    evaluation scores the same task."""
    objective = objective or Objective("causal_lm", None, mixture.block_size, 0)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for i, batch in enumerate(mixture.val_batches(micro_batch, max_batches)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss, count = objective.loss(model, to_device(batch, device), (1 << 40) + i, reduction="sum")
        total += loss.item()
        n += count
    model.train(was_training)
    return total / n if n else float("nan")


def _wrap(core: torch.nn.Module, args: TrainArgs, world: int, log) -> tuple[torch.nn.Module, bool]:
    """The module the loop calls: the model itself, DDP around it, or (FSDP) the model sharded in place;
    compiled if asked. Returns it and whether the parameters are sharded."""
    model = core
    if args.activation_checkpointing:
        core.set_activation_checkpointing(True)
    sharded = world > 1 and args.fsdp
    if args.fsdp and world == 1:
        log("fsdp: one process, nothing to shard over; training unsharded")
    if sharded:
        units = shard_model(core)
        log(f"fsdp: {units} units sharded over {world} processes")
    elif world > 1:
        # BERT's pooler/NSP head get no gradient from masked LM, and an MoE expert may get no token.
        unused = core.config.arch != "causal_lm" or bool(core.config.n_experts)
        model = torch.nn.parallel.DistributedDataParallel(core, find_unused_parameters=unused)
    if args.compile:
        model = torch.compile(model)
    return model, sharded


def _accumulate(model: torch.nn.Module, core: torch.nn.Module, mixture, objective: TrainObjective,
                args: TrainArgs, *, step: int, micro: int, accum: int, rank: int, world: int, sharded: bool,
                trusted: bool, ckpt: Path, device: torch.device) -> tuple[torch.Tensor, int]:
    """Forward and backward over the ``accum`` micro-batches of one optimizer step; the mean loss (a tensor:
    reading it is the caller's one sync per step) and this rank's token positions. Gradients are reduced
    over processes on the last micro-batch."""
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for k in range(accum):
        batch = to_device(mixture.next_batch(micro * world, rank=rank, world=world), device)
        tokens += batch_tokens(batch)
        sync = world == 1 or k == accum - 1  # reduce gradients over processes on the last micro-batch only
        ctx = model.no_sync() if not sync and not sharded else contextlib.nullcontext()
        if sharded:
            core.set_requires_gradient_sync(sync)
        # the first step's batch is checked (ids in range ...); later ones come from the same data
        checks = trusted_inputs() if trusted else contextlib.nullcontext()
        with ctx, checks, torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            rows = [rank + world * i for i in range(micro)]  # this rank's rows of the global batch
            if world > 1 and objective.arch not in ("causal_lm", None):
                # Masked tokens per rank vary: divide the rank's sum by the global count (times world,
                # as DDP averages gradients), so the gradient is the one-process mean over all of them.
                total, count = objective.loss(model, batch, step * accum + k, reduction="sum", rows=rows)
                n = torch.tensor(float(count), device=device)
                torch.distributed.all_reduce(n)
                loss = total * world / n.clamp(min=1) / accum
            else:
                loss = lm_loss(model, batch, objective, step * accum + k, rows) / accum
        if not torch.isfinite(loss):
            raise TrainingError(f"step {step + 1}: the loss is {loss.item() * accum} (not finite); stopped "
                                f"before updating the weights. The last good checkpoint is kept in {ckpt}; "
                                "try a lower --lr or float32")
        with ctx:
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum, tokens


class _Run:
    """One training run's state: the model (as wrapped for DDP / FSDP, and bare), its objective and optimizer,
    the step and token counts, and the files it writes (only rank 0 writes)."""

    def __init__(self, model: torch.nn.Module, mixture, args: TrainArgs, *, tokenizer: Any, resume: bool,
                 log, objective: TrainObjective | None) -> None:
        self.rank, self.world = _dist()
        self.device = next(model.parameters()).device
        self.micro = args.micro_batch or args.batch_size // self.world
        if args.batch_size % (self.micro * self.world):
            raise ValueError(f"batch_size={args.batch_size} must be a multiple of micro_batch x processes "
                             f"({self.micro} x {self.world})")
        self.accum = args.batch_size // (self.micro * self.world)
        self.args, self.mixture, self.tokenizer = args, mixture, tokenizer
        self.out = Path(args.out_dir)
        self.ckpt, self.metrics = self.out / "checkpoint", self.out / "metrics.jsonl"
        self.core = model
        self.model, self.sharded = _wrap(model, args, self.world, log)
        self.experts = ExpertLog(model)  # empty (false) for a dense model
        self.objective = objective or Objective(model.config.arch, tokenizer, mixture.block_size,
                                                model.config.vocab_size, args.seed)
        self.optimizer = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, kind=args.optimizer)
        self.step, self.tokens = 0, 0
        if resume:
            state = load_checkpoint(self.ckpt, model, self.optimizer)
            self.step, self.tokens = state["step"], state["tokens"]
            mixture.load_state_dict(state["data"])
            if self.step >= args.steps:
                raise ValueError(f"the checkpoint is at step {self.step}, not before --steps {args.steps}: "
                                 "raise --steps")
        else:
            torch.manual_seed(args.seed)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:
                self.metrics.write_text("")
        self.first_step, self.tokens_start, self.t_start = self.step, self.tokens, time.perf_counter()

    def record(self, row: dict) -> None:
        if self.rank == 0:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")

    def save(self) -> None:
        if self.rank == 0 or self.sharded:  # gathering a sharded model takes every rank; rank 0 writes
            state = {"step": self.step, "tokens": self.tokens, "data": self.mixture.state_dict(),
                     "args": asdict(self.args)}
            save_checkpoint(self.ckpt, self.core, self.optimizer, state, self.tokenizer, write=self.rank == 0)

    def validate(self) -> float:
        loss = evaluate(self.core, self.mixture, self.micro, self.args.eval_batches, self.args.dtype, self.objective)
        extra = {f"val_{k}": v for k, v in self.objective.metrics().items()}
        if loss != loss and not extra:  # no held-out data (an online method's rollouts): nothing to record
            return loss
        row = {"step": self.step, "val_loss": loss, **extra}
        if self.objective.perplexity:
            row["val_ppl"] = math.exp(loss)
        self.record(row)
        return loss

    def optimizer_step(self) -> dict:
        """One optimizer step at the scheduled learning rate; its metrics row (also written to metrics.jsonl)."""
        args = self.args
        lr = lr_at(self.step, lr=args.lr, warmup=args.warmup, max_steps=args.steps, min_lr=args.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.experts:
            self.experts.reset()  # the counts below are this step's
        loss_sum, tokens = _accumulate(self.model, self.core, self.mixture, self.objective, args, step=self.step,
                                       micro=self.micro, accum=self.accum, rank=self.rank, world=self.world,
                                       sharded=self.sharded, trusted=self.step > self.first_step, ckpt=self.ckpt,
                                       device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= self.world
        grad_norm = torch.nn.utils.clip_grad_norm_(self.core.parameters(), args.grad_clip)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += tokens * self.world
        elapsed = time.perf_counter() - self.t_start
        row = {"step": self.step, "loss": loss_sum.item(), "lr": lr, "grad_norm": float(grad_norm),
               "tokens": self.tokens, "tok_per_s": (self.tokens - self.tokens_start) / max(elapsed, 1e-9),
               "seconds": elapsed, **self.objective.metrics(), **(self.experts.read() if self.experts else {})}
        self.record(row)
        return row

    def summary(self, val_start: float, val_loss: float) -> dict:
        out = self.out
        return {"parameters": sum(p.numel() for p in {id(p): p for p in self.core.parameters()}.values()),
                "steps": self.step, "tokens": self.tokens, "seconds": time.perf_counter() - self.t_start,
                "val_loss_start": val_start, "val_ppl_start": math.exp(val_start), "val_loss": val_loss,
                "val_ppl": math.exp(val_loss), "checkpoint": str(self.ckpt), "metrics": str(self.metrics),
                "plot": str(out / "loss.png"), **({"experts_plot": str(out / "experts.png")} if self.experts else {})}


def train(model: torch.nn.Module, mixture, args: TrainArgs, *, tokenizer: Any = None, resume: bool = False,
          log=print, objective: TrainObjective | None = None) -> dict:
    """Train `model` (a CausalLM, Encoder or Seq2Seq) on `mixture`; return a summary dict. When
    torch.distributed is initialized the model is wrapped in DDP, or sharded in place with ``args.fsdp``.
    ``objective`` replaces the architecture's pre-training loss (alignment methods bring theirs, with
    their batches as `mixture`). Writes <out_dir>/checkpoint, metrics.jsonl, loss.png, and for an MoE model
    each step's expert shares and dropped-token fraction (train/experts.py) with experts.png."""
    run = _Run(model, mixture, args, tokenizer=tokenizer, resume=resume, log=log, objective=objective)
    val_start = val_loss = run.validate()
    if run.objective.perplexity:
        log(f"validation at step {run.step}: loss {val_start:.3f}, perplexity {math.exp(val_start):,.1f}")
    elif val_start == val_start:  # not nan: there is held-out data
        log(f"validation at step {run.step}: loss {val_start:.4f}")
    bar = None
    if args.progress and run.rank == 0:
        bar = tqdm(total=args.steps, initial=run.step, desc=args.name, unit="step", dynamic_ncols=True)
    run.model.train()
    run.t_start = time.perf_counter()
    while run.step < args.steps:
        row = run.optimizer_step()
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tok_per_s']:,.0f}",
                            **{k: f"{row[k]:.3g}" for k in run.objective.shown if k in row})
            bar.update(1)
        if run.step % args.eval_every == 0 or run.step == args.steps:
            val_loss = run.validate()
        if run.step % args.save_every == 0 or run.step == args.steps:
            run.save()
    if bar is not None:
        bar.close()
    if run.rank == 0:
        plot_losses(run.metrics, run.out / "loss.png")
        if run.experts:
            plot_experts(run.metrics, run.experts, run.out / "experts.png")
    return run.summary(val_start, val_loss)


def plot_losses(metrics: Path, png: Path) -> None:
    """Training and validation loss against step, from metrics.jsonl (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=False), label="train", lw=1)
    if val:
        ax.plot(*zip(*val, strict=False), "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_file(png, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
