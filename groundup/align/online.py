"""Online methods: PPO against a reward model (Ouyang et al. 2022) and GRPO with verifiable rewards (Shao et al.
2024), as rollout sources + objectives of the one training loop.

The loop asks its data for a batch each optimizer step. Here the data is a rollout buffer: when it is empty
it samples answers to fresh prompts with the current policy (KV-cached generate), scores them, computes
what the method needs (PPO: per-token rewards with the KL penalty, values, GAE advantages and returns; GRPO:
group-normalised advantages), and cuts the rollout into the minibatches of several epochs. So one rollout
feeds ``epochs x minibatches`` optimizer steps, as PPO prescribes, and everything else (learning-rate
schedule, clipping, checkpoints, resume, progress bar) is the loop's.

Rollout rows are prompt + response, right-padded; per-token tensors are in response coordinates [B, W]
(W the longest response), so response token j of row i is read at position prompt_len_i - 1 + j of the
model's outputs. The reference is the base with the LoRA adapter switched off (one copy of the weights for
policy, reference and value trunk) or, for full fine-tuning, a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.hf import from_pretrained, write_model
from ..data.preference import PromptRecord, pad_rows
from ..generate.entry import generate
from ..peft import adapters_disabled, has_adapter, load_adapter, lora_layers, write_adapter
from ..train.checkpoint import Checkpointable
from ..train.objective import TrainObjective
from ..utils.files import read_safetensors
from . import losses
from .logps import token_logps

RewardFn = Callable[[str, str, dict], float]


class RewardFunctionError(RuntimeError):
    """Every retry of a rollout hit a reward function that raised or returned a non-number."""


class PolicyValue(nn.Module, Checkpointable):
    """The trained module of PPO: the policy (a CausalLM, LoRA-wrapped or not) and a value head. The values
    read the policy's own hidden states (a shared trunk: no second model), or those of ``value_model`` (a
    separate trunk + head, e.g. a copy of the reward model, as trl 1.12 does)."""

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy, self.config, self.value_model = policy, policy.config, value_model
        w = policy.embed.weight
        # a zero head: values start at 0, so the first advantages are the rewards themselves
        self.value_head = nn.Linear(policy.config.d_model, 1, bias=False, device=w.device, dtype=torch.float32) \
            if value_model is None else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)

    def values(self, ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """[R, T - 1]: V of the state before each next token (``hidden``: the policy's [R, T - 1, C])."""
        if self.value_model is None:
            return self.value_head(hidden.float()).squeeze(-1)
        h, _ = self.value_model.backbone.hidden(ids[:, :-1])
        return self.value_model.score(h.to(self.value_model.score.weight.dtype)).squeeze(-1).float()

    def write_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if lora_layers(self.policy):
            write_adapter(self.policy, folder)
        else:
            write_model(self.policy, folder)
        heads = {} if self.value_head is None else {"value_head.weight": self.value_head.weight.detach().cpu()}
        if self.value_model is not None:  # tied aliases (the trunk's unused head) are not written twice
            heads.update({f"value_model.{k}": v.detach().cpu().contiguous()
                          for k, v in self.value_model.state_dict().items() if k not in self._value_aliases()})
        save_file(heads, str(folder / "value.safetensors"))

    def read_checkpoint(self, folder: Path) -> None:
        if has_adapter(folder):
            load_adapter(self.policy, folder, into_existing=True)
        else:
            self.policy.load_state_dict(from_pretrained(folder).state_dict())
        heads = read_safetensors(folder / "value.safetensors")
        if self.value_head is not None:
            with torch.no_grad():
                self.value_head.weight.copy_(heads["value_head.weight"])
        if self.value_model is not None:
            state = {k.removeprefix("value_model."): v for k, v in heads.items() if k.startswith("value_model.")}
            missing, unexpected = self.value_model.load_state_dict(state, strict=False)
            if unexpected or set(missing) - self._value_aliases():
                raise ValueError(f"{folder}/value.safetensors: not this value model's tensors (missing "
                                 f"{sorted(set(missing) - self._value_aliases())[:5]}, unexpected {unexpected[:5]})")
            self.value_model.backbone.tie_weights()

    def _value_aliases(self) -> set[str]:
        return {f"backbone.{k}" for k in self.value_model.backbone.tied_keys()}


def reference_of(policy: nn.Module, ref: nn.Module | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A context giving the reference model: the policy with its LoRA off, or the frozen copy ``ref``."""
    if ref is not None:
        return lambda: contextlib.nullcontext(ref)
    if not lora_layers(policy):
        raise ValueError("a full-weight policy needs a frozen reference copy (ref=...)")
    return lambda: adapters_disabled(policy)


@dataclass
class RolloutSettings:
    """Sampling and rollout sizes shared by PPO and GRPO."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    epochs: int = 1  # optimizer passes over each rollout (PPO epochs; GRPO's mu)
    minibatches: int = 1  # optimizer steps per pass
    seed: int = 0
    retries: int = 3  # rollouts redrawn after a reward function fails, before the run stops


@dataclass
class Rollout:
    """Rows prompt + response (ids [B, T], mask [B, T] of response tokens) and per-token tensors in
    response coordinates [B, W]; ``extra`` holds the method's tensors (advantages, returns ...)."""

    ids: torch.Tensor
    mask: torch.Tensor
    starts: torch.Tensor  # [B] prompt lengths: response token j of row i is ids[i, starts[i] + j]
    valid: torch.Tensor  # [B, W]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, idx: torch.Tensor) -> Rollout:
        keep = {k: v[idx] for k, v in self.extra.items()}
        return Rollout(self.ids[idx], self.mask[idx], self.starts[idx], self.valid[idx], keep)

    def to(self, device) -> Rollout:
        return Rollout(self.ids.to(device), self.mask.to(device), self.starts.to(device), self.valid.to(device),
                       {k: v.to(device) for k, v in self.extra.items()})

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())

    def response(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position values x [B, T - 1] (position t scores token t + 1) -> response coordinates [B, W]."""
        W = self.valid.shape[1]
        idx = (self.starts.unsqueeze(1) - 1 + torch.arange(W, device=x.device)).clamp(max=x.shape[1] - 1)
        return x.gather(1, idx) * self.valid.to(x.dtype)


class RolloutSource:
    """The loop's data for an online method: rollouts drawn on demand, served as minibatches."""

    def __init__(self, prompts: list[PromptRecord], policy: nn.Module, tokenizer: Any, settings: RolloutSettings,
                 *, pad_id: int, eos_ids: Sequence[int]) -> None:
        if not prompts:
            raise ValueError("no prompts")
        self.prompts, self.policy, self.tok, self.s = prompts, policy, tokenizer, settings
        self.pad_id, self.eos = pad_id, list(eos_ids)
        self.block_size = max(len(p.prompt) for p in prompts) + settings.max_new_tokens
        self.drawn, self.rollouts, self.skipped = 0, 0, 0
        self.queue: list[Rollout] = []
        self.stats: dict[str, float] = {}
        self._order: tuple[int, list[int]] = (-1, [])

    def _prompts(self, n: int) -> list[PromptRecord]:
        out = []
        for _ in range(n):
            epoch, pos = divmod(self.drawn, len(self.prompts))
            if self._order[0] != epoch:  # one seeded shuffle per pass over the prompts
                gen = torch.Generator().manual_seed(self.s.seed * 7919 + epoch)
                self._order = (epoch, torch.randperm(len(self.prompts), generator=gen).tolist())
            out.append(self.prompts[self._order[1][pos]])
            self.drawn += 1
        return out

    @torch.no_grad()
    def sample(self, prompts: list[list[int]]) -> tuple[list[list[int]], Rollout]:
        """Sample one response per prompt with the current policy; the rows as a Rollout (no extras)."""
        was = self.policy.training
        self.policy.eval()
        dev = next(self.policy.parameters()).device
        gen = torch.Generator(device=dev).manual_seed(self.s.seed * 1_000_003 + self.rollouts)
        out = generate(self.policy, prompts, self.s.max_new_tokens, temperature=self.s.temperature,
                       top_k=self.s.top_k, top_p=self.s.top_p, eos_token_id=self.eos or None, pad_token_id=self.pad_id,
                       generator=gen)
        self.policy.train(was)
        width = max(len(p) for p in prompts)
        responses = []
        for row in out[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in self.eos), len(row))
            responses.append(row[:cut])
        responses = [r if r else [self.pad_id] for r in responses]  # an empty answer still scores one token
        ids, mask = pad_rows(list(zip(prompts, responses, strict=True)), self.pad_id)
        W = max(len(r) for r in responses)
        valid = torch.arange(W).unsqueeze(0) < torch.tensor([len(r) for r in responses]).unsqueeze(1)
        return responses, Rollout(ids, mask, torch.tensor([len(p) for p in prompts]), valid)

    def next_batch(self, batch_size: int, *, rank: int = 0, world: int = 1) -> Rollout:
        if world > 1:
            raise ValueError("online alignment runs on one process")
        if not self.queue:
            for attempt in range(self.s.retries + 1):
                try:
                    rollout = self.make_rollout(batch_size * self.s.minibatches)
                    break
                except RewardFunctionError as err:
                    self.skipped += 1
                    warnings.warn(f"rollout {self.rollouts + 1} skipped: {err}; the weights are untouched and fresh "
                                  "prompts are drawn", stacklevel=2)
                    if attempt == self.s.retries:
                        raise RewardFunctionError(f"{self.s.retries + 1} rollouts in a row failed; last: {err}") \
                            from None
            self.rollouts += 1
            g = torch.Generator().manual_seed(self.s.seed * 31 + self.rollouts)
            for _ in range(self.s.epochs):
                order = torch.randperm(rollout.ids.shape[0], generator=g)
                self.queue += [rollout.rows(order[i: i + batch_size]) for i in range(0, len(order), batch_size)]
        return self.queue.pop(0)

    def make_rollout(self, n: int) -> Rollout:
        raise NotImplementedError

    def val_batches(self, batch_size: int, max_batches: int):
        return iter(())

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "rollouts": self.rollouts, "prompts": len(self.prompts), "seed": self.s.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["prompts"] != len(self.prompts):
            raise ValueError(f"the checkpoint saw {state['prompts']} prompts, this data has {len(self.prompts)}: "
                             "resume with the same files")
        self.drawn, self.rollouts = int(state["drawn"]), int(state["rollouts"])
        self.queue = []  # a rollout cut short by the interruption is drawn afresh


class _Logged(TrainObjective):
    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._n: dict[str, int] = defaultdict(int)
        self.source: RolloutSource | None = None

    def _log(self, **values: float | torch.Tensor) -> None:
        for k, v in values.items():
            self._sums[k] += float(v.detach()) if torch.is_tensor(v) else float(v)
            self._n[k] += 1

    def metrics(self) -> dict[str, float]:
        out = {k: self._sums[k] / self._n[k] for k in self._n}
        if self.source is not None and self.source.stats:
            out.update(self.source.stats)
            self.source.stats = {}
        self._sums.clear()
        self._n.clear()
        return out


# ---- PPO -----------------------------------------------------------------------------------------------------

@dataclass
class PPOSettings:
    """PPO's hyper-parameters (trl 1.12's names and defaults)."""

    kl_coef: float = 0.05
    kl_target: float | None = None  # adaptive KL (Ziegler et al. 2019): the KL per sequence to track
    kl_horizon: int = 10_000
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None
    score_at: str = "last"


class PPOSource(RolloutSource):
    """PPO rollouts: responses, their log-probs under the policy and the reference, values, the reward
    model's scores, the KL-penalised per-token rewards, GAE advantages (whitened) and returns."""

    def __init__(self, prompts, model: PolicyValue, reward_model: nn.Module, tokenizer, settings: RolloutSettings,
                 ppo: PPOSettings, *, pad_id: int, eos_ids: Sequence[int], ref: nn.Module | None = None) -> None:
        super().__init__(prompts, model.policy, tokenizer, settings, pad_id=pad_id, eos_ids=eos_ids)
        self.model, self.rm, self.p = model, reward_model, ppo
        self.reference = reference_of(model.policy, ref)
        self.kl = losses.AdaptiveKL(ppo.kl_coef, ppo.kl_target, ppo.kl_horizon)

    @torch.no_grad()
    def make_rollout(self, n: int) -> Rollout:
        records = self._prompts(n)
        responses, ro = self.sample([r.prompt for r in records])
        dev = next(self.model.parameters()).device
        ro = ro.to(dev)
        was = self.model.training
        self.model.eval()
        lp = token_logps(self.policy, ro.ids, ro.mask, temperature=self.s.temperature)
        logprobs, values = ro.response(lp.logps), ro.response(self.model.values(ro.ids, lp.hidden))
        with self.reference() as ref:
            ref_logprobs = ro.response(token_logps(ref, ro.ids, ro.mask, temperature=self.s.temperature).logps)
        real = ro.mask | (torch.arange(ro.ids.shape[1], device=dev) < ro.starts.unsqueeze(1).to(dev))
        scores = self.rm(ro.ids, real).float()
        self.model.train(was)
        has_eos = torch.tensor([bool(r) and r[-1] in self.eos for r in responses], device=dev)
        if self.p.missing_eos_penalty is not None:
            scores = scores - self.p.missing_eos_penalty * (~has_eos).float()
        valid = ro.valid
        rewards, kl, non_score = losses.ppo_rewards(logprobs, ref_logprobs, scores, valid, kl_coef=self.kl.value,
                                                    estimator=self.p.kl_estimator, score_at=self.p.score_at)
        value_valid = valid.clone()
        if self.p.score_at == "after":  # the extra position past the end holds a value too (trl 1.12)
            last = valid.sum(1)
            rows = torch.nonzero(last < valid.shape[1]).squeeze(1)
            value_valid[rows, last[rows]] = True
        values = values * value_valid
        if self.p.whiten_rewards:
            rewards = losses.masked_whiten(rewards, value_valid, shift_mean=False) * value_valid
        adv, returns = losses.gae(rewards, values, gamma=self.p.gamma, lam=self.p.lam)
        adv = losses.masked_whiten(adv, valid) * valid
        mean_kl = float(kl.sum(1).mean())
        self.kl.update(mean_kl, n)
        self.stats = {"score": float(scores.mean()), "kl": mean_kl, "kl_coef": self.kl.value,
                      "non_score_reward": float(non_score.sum(1).mean()),
                      "rlhf_reward": float(non_score.sum(1).mean() + scores.mean()),
                      "response_len": float(valid.sum(1).float().mean()), "eos_fraction": float(has_eos.float().mean())}
        ro.extra = {"logprobs": logprobs, "values": values, "advantages": adv, "returns": returns,
                    "value_valid": value_valid}
        return ro.to("cpu")


class PPOObjective(_Logged):
    """The clipped policy and value losses on a PPO minibatch (Rollout from PPOSource)."""

    shown = ("score", "kl")

    def __init__(self, ppo: PPOSettings, temperature: float = 1.0) -> None:
        super().__init__()
        self.p, self.temperature = ppo, temperature

    def loss(self, model: PolicyValue, batch: Rollout, index: int, reduction: str = "mean",
             rows: list[int] | None = None) -> tuple[torch.Tensor, int]:
        lp = token_logps(model.policy, batch.ids, batch.mask, temperature=self.temperature, entropy=True)
        x = batch.extra
        new = batch.response(lp.logps)
        vpred = batch.response(model.values(batch.ids, lp.hidden)) * x["value_valid"]
        out = losses.ppo_losses(new, x["logprobs"], x["advantages"], batch.valid, vpred, x["values"], x["returns"],
                                x["value_valid"], cliprange=self.p.cliprange, cliprange_value=self.p.cliprange_value,
                                vf_coef=self.p.vf_coef)
        ent = batch.response(lp.entropy)
        self._log(pg_loss=out["pg_loss"], vf_loss=out["vf_loss"], clipfrac=out["pg_clipfrac"],
                  vf_clipfrac=out["vf_clipfrac"], approxkl=out["approxkl"],
                  entropy=(ent.sum() / batch.valid.sum()))
        n = batch.ids.shape[0]
        return (out["loss"] * n if reduction == "sum" else out["loss"]), n


# ---- GRPO ----------------------------------------------------------------------------------------------------

@dataclass
class GRPOSettings:
    """GRPO's hyper-parameters (trl 1.16's names and defaults, but loss "grpo", the paper's)."""

    group: int = 8  # completions per prompt
    beta: float = 0.04  # k3 KL weight (0: no reference needed)
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss: str = "grpo"  # grpo | dapo | bnpo
    scale_rewards: str = "group"
    reward_weights: list[float] | None = None


def call_reward(fn: RewardFn, prompt: str, completion: str, record: dict) -> float:
    """One reward function's number for one completion; a raise or a non-finite / non-number result is a
    RewardFunctionError naming the function and the prompt's source."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        value = fn(prompt, completion, record)
    except Exception as err:  # the user's code: any failure is reported the same way
        raise RewardFunctionError(f"reward function {name} raised {type(err).__name__}: {err}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardFunctionError(f"reward function {name} returned {value!r}, not a finite number")
    return float(value)


class GRPOSource(RolloutSource):
    """GRPO rollouts: ``group`` completions of each prompt, scored by plain Python reward functions
    f(prompt, completion, record) -> float (weighted sum), advantages normalised within each group."""

    def __init__(self, prompts, policy: nn.Module, tokenizer, settings: RolloutSettings, grpo: GRPOSettings,
                 reward_fns: Sequence[RewardFn], *, pad_id: int, eos_ids: Sequence[int],
                 ref: nn.Module | None = None) -> None:
        super().__init__(prompts, policy, tokenizer, settings, pad_id=pad_id, eos_ids=eos_ids)
        if not reward_fns:
            raise ValueError("GRPO needs at least one reward function")
        self.g, self.fns = grpo, list(reward_fns)
        self.weights = grpo.reward_weights or [1.0] * len(self.fns)
        if len(self.weights) != len(self.fns):
            raise ValueError(f"{len(self.weights)} reward weights for {len(self.fns)} reward functions")
        self.reference = reference_of(policy, ref) if grpo.beta else None

    def next_batch(self, batch_size: int, *, rank: int = 0, world: int = 1) -> Rollout:
        return super().next_batch(batch_size * self.g.group, rank=rank, world=world)

    @torch.no_grad()
    def make_rollout(self, n: int) -> Rollout:
        G = self.g.group
        records = self._prompts(n // G)
        prompts = [r.prompt for r in records for _ in range(G)]
        responses, ro = self.sample(prompts)
        texts = [self.tok.decode(r, skip_special_tokens=True) for r in responses]
        rewards = torch.tensor([sum(w * call_reward(f, self.tok.decode(rec.prompt, skip_special_tokens=True), t,
                                                    rec.record) for f, w in zip(self.fns, self.weights, strict=True))
                                for rec, t in zip([r for r in records for _ in range(G)], texts, strict=True)])
        adv = losses.group_advantages(rewards, G, self.g.scale_rewards)
        dev = next(self.policy.parameters()).device
        ro = ro.to(dev)
        was = self.policy.training
        self.policy.eval()
        extra = {"advantages": adv.to(dev)}
        if self.s.epochs > 1:  # later passes compare with the sampling policy's log-probs
            extra["old"] = token_logps(self.policy, ro.ids, ro.mask, temperature=self.s.temperature).logps
        if self.reference is not None:
            with self.reference() as ref:
                extra["ref"] = token_logps(ref, ro.ids, ro.mask, temperature=self.s.temperature).logps
        self.policy.train(was)
        ro.extra = extra
        std = rewards.view(-1, G).std(dim=1)
        self.stats = {"reward": float(rewards.mean()), "reward_std": float(std.mean()),
                      "response_len": float(ro.valid.sum(1).float().mean()), "skipped_rollouts": float(self.skipped)}
        return ro.to("cpu")


class GRPOObjective(_Logged):
    """GRPO's clipped objective with the k3 KL on a minibatch of completions (Rollout from GRPOSource)."""

    shown = ("reward",)

    def __init__(self, grpo: GRPOSettings, temperature: float = 1.0) -> None:
        super().__init__()
        self.g, self.temperature = grpo, temperature

    def loss(self, model: nn.Module, batch: Rollout, index: int, reduction: str = "mean",
             rows: list[int] | None = None) -> tuple[torch.Tensor, int]:
        lp = token_logps(model, batch.ids, batch.mask, temperature=self.temperature)
        old = batch.extra.get("old", lp.logps.detach())
        ref = batch.extra.get("ref")
        loss, stats = losses.grpo_loss(lp.logps, old, ref, batch.extra["advantages"], lp.mask, beta=self.g.beta,
                                       epsilon_low=self.g.epsilon, epsilon_high=self.g.epsilon_high or self.g.epsilon,
                                       kind=self.g.loss)
        self._log(**{k: float(v) for k, v in stats.items()})
        n = batch.ids.shape[0]
        return (loss * n if reduction == "sum" else loss), n


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy (the reference of a full-weight policy)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
