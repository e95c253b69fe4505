"""The alignment losses as functions of log-probabilities, rewards and masks: no model in here.

Shapes: P pairs, R rows (answers), B rollout rows, W response positions. A "summed log-prob" is the sum of
log pi(token) over an answer's tokens; "average" divides by their number. Each function returns the loss
(mean over its items unless said) and the per-item rewards the trainers log.

Every formula is the paper's, written to give the same numbers as trl (1.16 for DPO/IPO/KTO/ORPO/SimPO/
reward modelling/GRPO, 1.12 for PPO, its last release with PPO); tests/align/test_parity.py checks them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_KINDS = ("sigmoid", "robust", "hinge", "ipo")


def reward_pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                     center: float | None = None) -> torch.Tensor:
    """The reward model's pairwise loss (Ouyang et al. 2022, eq. 1): -log sigmoid(r_c - r_r - margin),
    mean over pairs; ``margin`` per pair (Llama 2's margin by preference strength, Touvron et al. 2023);
    ``center``: + center * mean((r_c + r_r)^2), which keeps the rewards near zero (Eisenstein et al. 2023)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *,
             beta: float, kind: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_len: torch.Tensor | None = None, rejected_len: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference losses on summed log-probs [P]: (mean loss, chosen rewards, rejected rewards),
    the rewards being beta x (log pi - log pi_ref).

    - sigmoid: DPO (Rafailov et al. 2023), -log sigmoid(beta x delta) with delta the difference of the two
      log-ratios; ``label_smoothing`` e assumes a fraction e of labels flipped (conservative DPO, Mitchell
      2023): -(1 - e) log sigmoid(beta delta) - e log sigmoid(-beta delta).
    - robust: the unbiased estimate under flipped labels (Chowdhury et al. 2024): the two terms' difference
      divided by 1 - 2e.
    - hinge: max(0, 1 - beta delta) (SLiC, Zhao et al. 2023).
    - ipo: (delta' - 1 / (2 beta))^2 (Azar et al. 2023, eq. 17), where delta' uses log-ratios averaged per
      answer token (``chosen_len`` / ``rejected_len``), as trl and the IPO authors do.
    """
    c, r = chosen - ref_chosen, rejected - ref_rejected
    delta = c - r
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif kind == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
                  + label_smoothing * F.logsigmoid(-beta * delta)) / (1 - 2 * label_smoothing)
    elif kind == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif kind == "ipo":
        if chosen_len is None or rejected_len is None:
            raise ValueError("the ipo loss needs the answers' token counts (chosen_len, rejected_len)")
        avg = c / chosen_len.clamp(min=1) - r / rejected_len.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(DPO_KINDS)}")
    return losses.mean(), beta * c.detach(), beta * r.detach()


def kto_loss(logps: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl_logps: torch.Tensor | None,
             ref_kl_logps: torch.Tensor | None, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, eq. 7) on unpaired answers [R]: (loss, rewards [R], kl).

    The reference point z0 is the batch's KL(pi || pi_ref), estimated from mismatched (prompt, answer) rows
    (``kl_logps`` against ``ref_kl_logps``), clamped at 0 and not differentiated. A desirable answer's loss is
    1 - sigmoid(beta (log-ratio - z0)), an undesirable one's 1 - sigmoid(beta (z0 - log-ratio)), weighted;
    the loss is their mean over the rows."""
    if kl_logps is not None and ref_kl_logps is not None:
        kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    else:
        kl = torch.zeros((), device=logps.device)
    ratio = logps - ref
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    return losses.mean(), beta * ratio.detach(), kl


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, nll: torch.Tensor, *, beta: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO (Hong et al. 2024, eqs. 4-7): the chosen answers' NLL minus beta x log sigmoid(log odds ratio),
    the odds of an answer being p / (1 - p) with p its per-token average probability. No reference model.
    Returns the loss and the logged figures (rewards are beta x average log-probs)."""
    c, r = chosen_avg.float(), rejected_avg.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    loss = nll - beta * ratio.mean()
    return loss, {"chosen": beta * c.detach(), "rejected": beta * r.detach(), "log_odds_ratio": ratio.mean().detach(),
                  "log_odds_chosen": log_odds.mean().detach(), "nll": nll.detach()}


def simpo_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, *, beta: float, gamma: float,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024, eq. 6): -log sigmoid(beta (avg log pi_c - avg log pi_r) - gamma), no
    reference; with label smoothing as conservative DPO. Returns (loss, beta avg_c, beta avg_r)."""
    z = beta * (chosen_avg - rejected_avg) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses.mean(), beta * chosen_avg.detach(), beta * rejected_avg.detach()


# ---- GRPO (Shao et al. 2024) ---------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> torch.Tensor:
    """Advantages [N] of rewards [N] in consecutive groups of ``group`` completions of one prompt: the reward
    minus its group's mean, divided by the group's standard deviation (Bessel-corrected) + 1e-4 ("group"),
    by the batch's ("batch"), or not ("none"). A NaN reward (a failed reward function) gets advantage 0 and
    is left out of its group's statistics."""
    g = rewards.view(-1, group)  # [prompts, group]
    mean = torch.nanmean(g, dim=1, keepdim=True)
    adv = g - mean
    if scale != "none":
        def std(x: torch.Tensor, dim: int | None) -> torch.Tensor:
            n = (~torch.isnan(x)).sum(dim=dim, keepdim=dim is not None)
            m = torch.nanmean(x, dim=dim, keepdim=dim is not None)
            var = torch.nanmean((x - m) ** 2, dim=dim, keepdim=dim is not None) * n / (n - 1)
            return torch.where(n > 1, var, torch.full_like(var, float("nan"))).sqrt()

        if scale == "group":
            adv = adv / (std(g, 1) + 1e-4)
        elif scale == "batch":
            adv = adv / (std(rewards, None) + 1e-4)
        else:
            raise ValueError(f"scale={scale!r} must be 'group', 'batch' or 'none'")
    return torch.nan_to_num(adv.reshape(-1), nan=0.0)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, beta: float, epsilon_low: float = 0.2,
              epsilon_high: float = 0.2, kind: str = "grpo", num_items: float | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate on per-token log-probs [B, W] with sequence advantages [B]:
    -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + beta x k3, where k3 = exp(ref - logp) -
    (ref - logp) - 1 (Schulman's unbiased, positive KL estimator). Aggregation by ``kind``: "grpo" averages
    each completion's tokens and then the completions (the paper); "dapo" sums every token and divides by
    ``num_items``, the answer tokens of the whole generation batch (Yu et al. 2025; default: this batch's);
    "bnpo" divides by this batch's answer tokens."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats: dict[str, torch.Tensor] = {}
    if beta:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
        stats["kl"] = ((kl * mask).sum() / mask.sum().clamp(min=1)).detach()
    if kind == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif kind == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif kind == "dapo":
        loss = (per_token * mask).sum() / (num_items if num_items is not None else mask.sum().clamp(min=1))
    else:
        raise ValueError(f"kind={kind!r} must be 'grpo', 'dapo' or 'bnpo'")
    low = (ratio < 1 - epsilon_low) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    stats["clip_ratio"] = (((low | high).to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1)).detach()
    return loss, stats


# ---- PPO (Schulman et al. 2017; Ouyang et al. 2022) ------------------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries (unbiased variance); with shift_mean=False the
    mean is added back (scale only)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def ppo_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, *,
                kl_coef: float, estimator: str = "k1", score_at: str = "last"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards [B, W] of rollouts: -kl_coef x KL_t on every response token (k1: log pi - log
    pi_ref; k3: the positive estimator), plus the reward model's score at the last token (Ouyang et al.
    2022; Stiennon et al. 2020). ``valid`` [B, W] marks response tokens (through the end-of-text token).
    score_at="after" puts the score one position past the last token when there is room, as trl 1.12's
    PPOTrainer does (its value target then includes that extra position). Returns (rewards, kl, the KL
    part of the reward)."""
    valid = valid.bool()
    logr = torch.where(valid, ref_logprobs - logprobs, torch.zeros_like(logprobs))
    kl = -logr if estimator == "k1" else torch.expm1(logr) - logr
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    last = valid.sum(1) - 1  # [B] index of the last response token
    if score_at == "after":
        last = torch.where(last + 1 < rewards.shape[1], last + 1, last)
    elif score_at != "last":
        raise ValueError(f"score_at={score_at!r} must be 'last' or 'after'")
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards, kl, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, *, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response positions [B, W]:
    delta_t = r_t + gamma V_(t+1) - V_t, A_t = delta_t + gamma lam A_(t+1), with V and r zero past the
    end (the episode ends after the last token). Returns (advantages, returns = A + V)."""
    W = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(W)):
        nxt = values[:, t + 1] if t < W - 1 else torch.zeros_like(last)
        last = rewards[:, t] + gamma * nxt - values[:, t] + gamma * lam * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def ppo_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, valid: torch.Tensor,
               vpred: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, value_valid: torch.Tensor, *,
               cliprange: float, cliprange_value: float, vf_coef: float) -> dict[str, torch.Tensor]:
    """PPO's clipped policy loss, max(-A ratio, -A clip(ratio, 1 - c, 1 + c)) averaged over response tokens,
    and its clipped value loss, 0.5 max((V - R)^2, (clip(V, V_old +- c_v) - R)^2) averaged over value
    positions; "loss" = policy + vf_coef x value. Also the clip fractions and approx KL (0.5 mean d^2)."""
    valid, value_valid = valid.to(logprobs.dtype), value_valid.to(logprobs.dtype)
    diff = logprobs - old_logprobs
    ratio = torch.exp(diff)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), valid)
    vclip = torch.clamp(vpred, old_values - cliprange_value, old_values + cliprange_value)
    vf1, vf2 = (vpred - returns) ** 2, (vclip - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), value_valid)
    return {"loss": pg_loss + vf_coef * vf_loss, "pg_loss": pg_loss, "vf_loss": vf_loss,
            "pg_clipfrac": masked_mean((pg2 > pg1).to(valid.dtype), valid).detach(),
            "vf_clipfrac": masked_mean((vf2 > vf1).to(valid.dtype), value_valid).detach(),
            "approxkl": (0.5 * (diff * valid) ** 2).sum().detach() / valid.numel(),
            "ratio": masked_mean(ratio, valid).detach()}


class AdaptiveKL:
    """Ziegler et al. 2019's controller: kl_coef moves so that the measured KL tracks ``target``:
    coef *= 1 + clip(KL / target - 1, -0.2, 0.2) x n / horizon after n rollouts. ``target`` None: fixed."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10_000) -> None:
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:
            err = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + err * n / self.horizon
