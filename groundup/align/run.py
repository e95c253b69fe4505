"""The alignment pipeline behind `groundup align` (and `groundup reward train|score`): data, base, method,
the one training loop, the output folders.

Order of work, so that bad input fails before anything long: the settings, the data (every record, with
file:line errors), the reward model or reward functions, then the base; for DPO, IPO and KTO the
reference log-probs of every answer are computed from the base once, before any adapter is applied.
Outputs: ``rm`` writes <out>/reward_model (transformers' sequence-classification folder with the
tokenizer); the policy methods write <out>/adapter (peft's folder) with --lora / --qlora, or <out>/model
with full weights, and with --merge also <out>/merged. <out>/checkpoint is resumable (--resume);
metrics.jsonl, loss.png and align.png (the method's curves) are written as the loop runs.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import peft
from ..checkpoint.hf import check_model_folder, config_from_hf, from_pretrained
from ..checkpoint.io import read_json
from ..data.instruct import SEPARATOR, read_records
from ..data.preference import (
    PreferenceData,
    PreferenceFormatter,
    PreferenceGroup,
    PreferenceStats,
    collate_groups,
    load_preferences,
    load_prompts,
    unpaired,
)
from ..quant import load_quantized
from ..tokenizer import Tokenizer
from ..train.finetune import RunSettings
from ..train.loop import TrainArgs, train
from ..utils.files import atomic_file, atomic_write_text
from ..utils.settings import option, option_list
from . import direct, online
from .reward import RewardModel, load_reward_model
from .rewards import load_reward_fn

METHODS = ("rm", "ppo", "dpo", "ipo", "kto", "orpo", "simpo", "grpo")
BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0, "grpo": 0.04}
# the flag a method needs, with the hint its refusal gives (and no other method takes it)
NEEDS = {"ppo": ("reward_model", "--reward-model RM_FOLDER (train one with --method rm)"),
         "grpo": ("reward", "--reward (e.g. goat_exact, or file.py:function)")}


@dataclass
class AlignSettings(RunSettings):
    """Every setting of an alignment run, with its default."""

    model: str = option("", "HF folder of a decoder-only model (the SFT model) with tokenizer.json", positional=True)
    method: str = option("dpo", "what is trained: a reward model (rm) or the policy by ppo, dpo, ipo, kto, orpo, "
                         "simpo or grpo", choices=METHODS)
    data: list = option_list("JSONL files: preference records (rm, dpo, ...; kto also takes completion + label) "
                             "or prompts (ppo, grpo)", required=True)
    reward_model: str | None = option(None, "ppo: the reward model folder (from --method rm)")
    reward: list | None = option_list("grpo: reward functions, built-in (goat_exact, goat_format) or file.py:function")
    reward_weights: list | None = option_list("grpo: a weight per reward function")
    lora: bool = option(False, "train a LoRA adapter over the frozen base (the reference is the base: no copy)")
    qlora: bool = option(False, "LoRA over a 4-bit NF4 base")
    r: int = option(8, "LoRA rank")
    alpha: float = option(16.0, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    target_modules: list | None = option_list("LoRA target module suffixes (default q_proj v_proj)")
    steps: int = option(200, "optimizer steps")
    batch_size: int = option(8, "preference records (prompts) per optimizer step; ppo/grpo: prompts per minibatch")
    micro_batch: int | None = option(None, "records per forward (gradient accumulation; offline methods)")
    lr: float | None = option(None, "peak learning rate (default 1e-5 full, 1e-4 LoRA)")
    min_lr: float | None = option(None, "final learning rate (default lr / 10)")
    warmup: int = option(10, "linear warm-up steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    beta: float | None = option(None, "dpo/ipo/kto: KL weight; orpo: lambda; simpo: reward scale; grpo: k3 KL weight "
                                "(defaults " + ", ".join(f"{k} {v:g}" for k, v in BETA.items()) + ")")
    dpo_loss: str = option("sigmoid", "dpo: sigmoid, robust (noisy labels) or hinge",
                           choices=("sigmoid", "robust", "hinge"))
    label_smoothing: float = option(0.0, "dpo/simpo: assumed fraction of flipped labels")
    desirable_weight: float = option(1.0, "kto: weight of desirable answers")
    undesirable_weight: float = option(1.0, "kto: weight of undesirable answers")
    simpo_gamma: float = option(0.5, "simpo: target reward margin")
    orpo_nll: str = option("full", "orpo: NLL over the chosen rows' prompt and answer (trl) or the answer",
                           choices=("full", "answer"))
    center_rewards: float | None = option(None, "rm: coefficient of the centering term mean((r_c + r_r)^2)")
    sft_weight: float = option(0.0, "dpo/ipo: add this times the chosen answers' NLL per token (RPO; trl's 'sft' "
                               "loss term), which keeps DPO from lowering the chosen answers' likelihood")
    kl_coef: float = option(0.05, "ppo: KL penalty per token")
    kl_target: float | None = option(None, "ppo: adaptive KL controller's target KL per answer (default: fixed)")
    gamma: float = option(1.0, "ppo: discount")
    lam: float = option(0.95, "ppo: GAE lambda")
    cliprange: float = option(0.2, "ppo: policy ratio clip")
    cliprange_value: float = option(0.2, "ppo: value clip")
    vf_coef: float = option(0.1, "ppo: value loss weight")
    whiten_rewards: bool = option(False, "ppo: whiten the per-token rewards")
    missing_eos_penalty: float | None = option(None, "ppo: subtracted from the score of answers without an end")
    value_model: str = option("shared", "ppo: value head on the policy's trunk (shared) or a trained copy of the "
                              "reward model (separate, as trl 1.12)", choices=("shared", "separate"))
    epochs: int | None = option(None, "ppo/grpo: optimizer passes over each rollout (default 4 for ppo; grpo's mu, 1)")
    minibatches: int = option(1, "ppo/grpo: minibatches per pass (a rollout is batch_size x minibatches prompts)")
    group: int = option(8, "grpo: completions per prompt")
    epsilon: float = option(0.2, "grpo: ratio clip")
    grpo_loss: str = option("grpo", "grpo: per-completion means (grpo), token sum / generation tokens (dapo), "
                            "token mean (bnpo)", choices=("grpo", "dapo", "bnpo"))
    scale_rewards: str = option("group", "grpo: advantage scale", choices=("group", "batch", "none"))
    max_new_tokens: int = option(48, "ppo/grpo: answer length limit")
    temperature: float = option(1.0, "ppo/grpo: sampling temperature")
    top_k: int | None = option(None, "ppo/grpo: top-k sampling")
    top_p: float | None = option(None, "ppo/grpo: nucleus sampling")
    max_len: int | None = option(None, "context of a row (default: the model's); longer prompts are cut from the left")
    separator: str | None = option(None, "prompt/answer separator of string prompts (default '\\n\\n###\\n\\n', as "
                                   "finetune)")
    out: str = option("out/align", "output folder")
    merge: bool = option(False, "with --lora: also write <out>/merged, a plain model folder")

    def check(self) -> None:
        """Refuse contradictory settings before anything is read."""
        is_online = METHOD[self.method].online
        if self.lora and self.qlora:
            raise ValueError("--lora and --qlora: pick one (--qlora is LoRA over a 4-bit base)")
        if self.merge and not (self.lora or self.qlora):
            raise ValueError("--merge goes with --lora or --qlora (full weights are written as a model folder)")
        for method, (flag, hint) in NEEDS.items():
            given = bool(getattr(self, flag))
            if self.method == method and not given:
                raise ValueError(f"--method {method} needs {hint}")
            if self.method != method and given:
                raise ValueError(f"--{flag.replace('_', '-')} goes with --method {method}, not {self.method}")
        if is_online and self.micro_batch:
            raise ValueError("--micro-batch goes with the offline methods; ppo/grpo size work by --batch-size and "
                             "--minibatches")
        if self.method == "grpo" and self.group < 2:
            raise ValueError(f"--group {self.group}: GRPO compares at least 2 completions per prompt")
        for name in ("steps", "batch_size", "epochs", "minibatches", "max_new_tokens", "r"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.beta is not None and self.beta < 0:
            raise ValueError(f"--beta {self.beta} must be >= 0")


def _load_base(s: AlignSettings):
    if not s.qlora:
        return from_pretrained(s.model, dtype=torch.float32)

    return load_quantized(s.model, "nf4", double_quant=True, compute_dtype=torch.float32)


def _apply_lora(model, s: AlignSettings) -> None:
    peft.apply_lora(model, peft.LoraConfig(r=s.r, alpha=s.alpha, dropout=s.lora_dropout,
                                           target_modules=s.target_modules or ["q_proj", "v_proj"]))


@dataclass
class _Setup:
    """What every method's builder is handed: the settings, tokenizer, config and base, and the run's data."""

    s: AlignSettings
    tok: Tokenizer
    model: torch.nn.Module
    pad: int
    eos: list[int]
    beta: float
    data: Any  # PreferenceData (offline methods) or the prompts (online ones)
    rewards: Any  # the reward model (ppo) or reward functions (grpo), loaded before the base
    ref: torch.nn.Module | None  # a frozen copy of the base, for an online method's KL without an adapter


def _rollout(x: _Setup) -> online.RolloutSettings:
    s = x.s
    return online.RolloutSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                  top_p=s.top_p, epochs=s.epochs if s.epochs is not None else METHOD[s.method].epochs,
                                  minibatches=s.minibatches, seed=s.seed)


def _build_rm(x: _Setup) -> tuple[torch.nn.Module, Any, Any]:
    objective = direct.PreferenceObjective("rm", direct.DirectSettings(center_rewards=x.s.center_rewards))
    return RewardModel(x.model), x.data, objective


def _build_ppo(x: _Setup) -> tuple[torch.nn.Module, Any, Any]:
    s = x.s
    value = load_reward_model(s.reward_model, dtype=torch.float32).train() if s.value_model == "separate" else None
    trained = online.PolicyValue(x.model, value)
    ppo = online.PPOSettings(kl_coef=s.kl_coef, kl_target=s.kl_target, gamma=s.gamma, lam=s.lam,
                             cliprange=s.cliprange, cliprange_value=s.cliprange_value, vf_coef=s.vf_coef,
                             whiten_rewards=s.whiten_rewards, missing_eos_penalty=s.missing_eos_penalty)
    data = online.PPOSource(x.data, trained, x.rewards, x.tok, _rollout(x), ppo, pad_id=x.pad, eos_ids=x.eos,
                            ref=x.ref)
    objective = online.PPOObjective(ppo, s.temperature)
    objective.source = data
    return trained, data, objective


def _build_grpo(x: _Setup) -> tuple[torch.nn.Module, Any, Any]:
    s = x.s
    grpo = online.GRPOSettings(group=s.group, beta=x.beta, epsilon=s.epsilon, loss=s.grpo_loss,
                               scale_rewards=s.scale_rewards,
                               reward_weights=[float(w) for w in s.reward_weights] if s.reward_weights else None)
    data = online.GRPOSource(x.data, x.model, x.tok, _rollout(x), grpo, x.rewards, pad_id=x.pad, eos_ids=x.eos,
                             ref=x.ref)
    objective = online.GRPOObjective(grpo, s.temperature)
    objective.source = data
    return x.model, data, objective


def _build_direct(x: _Setup) -> tuple[torch.nn.Module, Any, Any]:
    s = x.s
    objective = direct.PreferenceObjective(s.method, direct.DirectSettings(
        beta=x.beta, dpo_loss=s.dpo_loss, label_smoothing=s.label_smoothing, desirable_weight=s.desirable_weight,
        undesirable_weight=s.undesirable_weight, simpo_gamma=s.simpo_gamma, orpo_nll=s.orpo_nll,
        sft_weight=s.sft_weight))
    return x.model, x.data, objective


def _policy_rm(s: AlignSettings, vocab_size: int) -> RewardModel:
    rm = load_reward_model(s.reward_model, dtype=torch.float32)
    if rm.config.vocab_size != vocab_size:
        raise ValueError(f"--reward-model {s.reward_model}: vocabulary of {rm.config.vocab_size}, the policy's is "
                         f"{vocab_size}; the reward model must read the policy's tokens")
    return rm.requires_grad_(False)


@dataclass(frozen=True)
class Method:
    """One alignment method as data: what it reads, what it loads first, how its trainer is built, what it writes."""

    build: Callable[[_Setup], tuple[torch.nn.Module, Any, Any]]  # -> (trained module, data source, objective)
    online: bool = False  # trains on its own rollouts of prompts (else on preference records)
    labels: bool = False  # records are unpaired answers with a label (KTO) rather than pairs
    rewards: Callable[[AlignSettings, int], Any] | None = None  # loaded before the base (vocab_size given)
    epochs: int = 1  # default optimizer passes over each rollout
    kl_always: bool = False  # an online method whose KL term needs the reference whatever beta is (PPO's penalty)
    writes_reward_model: bool = False  # <out>/reward_model rather than the policy


METHOD: dict[str, Method] = {
    "rm": Method(_build_rm, writes_reward_model=True),
    "ppo": Method(_build_ppo, online=True, rewards=_policy_rm, epochs=4, kl_always=True),
    "grpo": Method(_build_grpo, online=True, rewards=lambda s, _: [load_reward_fn(spec) for spec in s.reward]),
    "kto": Method(_build_direct, labels=True),
    **{name: Method(_build_direct) for name in ("dpo", "ipo", "orpo", "simpo")},
}


def _read_data(s: AlignSettings, m: Method, tok: Tokenizer, max_len: int, sep: str, pad: int, log) -> Any:
    """The prompts of an online method, or the preference records split into training and held-out."""
    if m.online:
        prompts = load_prompts(s.data, tok, separator=sep, max_len=max_len - s.max_new_tokens)
        log(f"data: {len(prompts):,} prompts")
        return prompts
    groups, stats = load_preferences(s.data, tok, separator=sep, max_len=max_len,
                                     need="labels" if m.labels else "pairs")
    if m.labels:
        groups = unpaired(groups, s.seed)
    data = PreferenceData.split(groups, val_fraction=s.val_fraction, pad_id=pad, seed=s.seed)
    log(f"data: {stats.records:,} records, {stats.pairs:,} pairs; {len(data.train):,} training / "
        f"{len(data.val):,} held-out {'answers' if m.labels else 'prompts'}; dropped "
        f"{stats.equal_dropped} equal pairs and {stats.too_long_dropped} too long, {stats.truncated} prompts cut")
    return data


def _write(s: AlignSettings, m: Method, trained, model, data, tok: Tokenizer, summary: dict) -> None:
    """The run's folders: the reward model, the adapter (and merged model), or the full model."""
    out = Path(s.out)
    if m.writes_reward_model:
        trained.save_pretrained(out / "reward_model")
        tok.save_pretrained(out / "reward_model")
        summary["reward_model"] = str(out / "reward_model")
        summary.update({f"held_out_{k}": v for k, v in direct.reward_accuracy(trained, data).items()})
    elif s.lora or s.qlora:
        peft.save_adapter(model, out / "adapter")
        tok.save_pretrained(out / "adapter")
        summary["adapter"] = str(out / "adapter")
        if s.merge:
            peft.merge_and_unload(model).save_pretrained(out / "merged")
            tok.save_pretrained(out / "merged")
            summary["merged"] = str(out / "merged")
    else:
        model.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        summary["model"] = str(out / "model")


def _setup(s: AlignSettings, m: Method, log) -> _Setup:
    """Read the data, load the rewards and the base (in that order: bad input fails before the long work), the
    reference log-probs or copy, and the adapter."""
    check_model_folder(s.model, "causal_lm", "a decoder-only")
    tok = Tokenizer.from_pretrained(s.model)
    cfg = config_from_hf(read_json(Path(s.model) / "config.json"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    beta = s.beta if s.beta is not None else BETA.get(s.method, 0.1)
    data = _read_data(s, m, tok, s.max_len or cfg.max_seq_len, SEPARATOR if s.separator is None else s.separator,
                      pad, log)
    rewards = m.rewards(s, cfg.vocab_size) if m.rewards else None
    model = _load_base(s)
    if s.method in direct.NEEDS_REFERENCE:  # the base is the reference: its log-probs once, before any adapter
        direct.attach_reference(data.train + data.val, model, pad, batch_size=s.micro_batch or s.batch_size,
                                progress=not s.quiet)
    adapter = s.lora or s.qlora
    ref = online.frozen_copy(model) if m.online and not adapter and (m.kl_always or beta) else None
    if adapter:
        _apply_lora(model, s)
    else:
        model.requires_grad_(True)
    eos = cfg.eos_ids or ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    return _Setup(s, tok, model, pad, eos, beta, data, rewards, ref)


def run(s: AlignSettings, log=print) -> dict[str, Any]:
    """Check, read the data, load the models, train, write the folders; the run's summary."""
    s.check()
    m = METHOD[s.method]
    x = _setup(s, m, log)
    trained, data, objective = m.build(x)
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in {id(p): p for p in trained.parameters()}.values())
    log(f"method: {s.method} ({'qlora' if s.qlora else 'lora' if s.lora else 'full weights'}): {trainable:,} "
        f"trainable of {total:,} parameters")
    lr = s.lr if s.lr is not None else (1e-4 if s.lora or s.qlora else 1e-5)
    targs = TrainArgs(out_dir=s.out, steps=s.steps, batch_size=s.batch_size, micro_batch=s.micro_batch, lr=lr,
                      min_lr=s.min_lr if s.min_lr is not None else lr / 10, warmup=s.warmup,
                      weight_decay=s.weight_decay, grad_clip=s.grad_clip, dtype=s.dtype, eval_every=s.eval_every,
                      save_every=s.save_every, seed=s.seed, progress=not s.quiet, name=f"align {s.method}")
    out = Path(s.out)
    atomic_write_text(out / "settings.json", json.dumps(dataclasses.asdict(s), indent=2, default=str))
    t0 = time.perf_counter()
    summary = train(trained, data, targs, tokenizer=x.tok, resume=s.resume, log=log, objective=objective)
    summary.update(method=s.method, trainable=trainable, total=total, seconds=time.perf_counter() - t0,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    _write(s, m, trained, x.model, data, x.tok, summary)
    plot_alignment(out / "metrics.jsonl", out / "align.png", s.method)
    summary["plot"] = str(out / "align.png")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


CURVES = {"rm": ("loss", "accuracy", "margin"), "ppo": ("score", "kl", "entropy", "clipfrac", "vf_loss"),
          "grpo": ("reward", "kl", "clip_ratio", "loss"), "kto": ("loss", "kl", "rewards_chosen")}


def plot_alignment(metrics: Path, png: Path, method: str) -> None:
    """The method's curves against step from metrics.jsonl (training and, dashed, held-out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    keys = CURVES.get(method, ("loss", "accuracy", "margin"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys, strict=True):
        for name, style in ((key, "-"), (f"val_{key}", "o--")):
            pts = [(r["step"], r[name]) for r in rows if name in r and r[name] == r[name]]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, lw=1, label="held out" if name.startswith("val") else "train")
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"groundup align --method {method}")
    fig.tight_layout()
    atomic_file(png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


@torch.no_grad()
def score_file(rm_folder: str, data: list[str], *, batch_size: int = 16, separator: str | None = None
               ) -> dict[str, Any]:
    """`groundup reward score`: the reward of every answer in preference or prompt/completion files; for
    pairs and rankings also the pair accuracy."""

    rm = load_reward_model(rm_folder)
    tok = Tokenizer.from_pretrained(rm_folder)
    fmt = PreferenceFormatter(tok, SEPARATOR if separator is None else separator)
    stats, groups = PreferenceStats(), []
    for path in data:
        for rec, where in read_records(path):
            if isinstance(rec, dict) and "completion" in rec and "label" not in rec:
                rec = {**rec, "label": True}  # a bare prompt/completion record: scored, not judged
            g = fmt(rec, where, stats)
            if g is not None:
                groups.append(g)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows, correct, pairs = [], 0, 0
    for start in range(0, len(groups), batch_size):
        part: list[PreferenceGroup] = groups[start: start + batch_size]
        b = collate_groups(part, pad)
        r = rm(b.ids, b.real).tolist()
        correct += sum(r[c] > r[j] for c, j in zip(b.chosen.tolist(), b.rejected.tolist(), strict=True))
        pairs += b.chosen.numel()
        k = 0
        for g in part:
            rows.append({"source": g.source, "rewards": r[k: k + len(g.completions)]})
            k += len(g.completions)
    return {"scores": rows, "pairs": pairs, "accuracy": correct / pairs if pairs else None}
