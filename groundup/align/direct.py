"""Offline preference methods as objectives of the one training loop: the reward model (rm) and the direct
methods DPO, IPO, KTO, ORPO and SimPO, on PreferenceBatches (data/preference.py).

The reference model of DPO, IPO and KTO is frozen, so its log-probs of every answer are computed once,
before training (``attach_reference``): no second model is held or run while training, whether the policy
is a LoRA over the base (the reference is then the base with the adapter off) or a full copy. ORPO and
SimPO have no reference.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from ..data.preference import PreferenceBatch, PreferenceData, PreferenceGroup, collate_groups
from ..train.objective import TrainObjective
from . import losses
from .logps import token_logps

DIRECT = ("rm", "dpo", "ipo", "kto", "orpo", "simpo")
NEEDS_REFERENCE = ("dpo", "ipo", "kto")


@dataclass
class DirectSettings:
    """The methods' hyper-parameters (trl's names and defaults where trl has the method)."""

    beta: float = 0.1  # DPO/IPO/KTO: the KL weight; ORPO: lambda; SimPO: the reward scale
    dpo_loss: str = "sigmoid"  # dpo: sigmoid | robust | hinge
    label_smoothing: float = 0.0
    desirable_weight: float = 1.0  # KTO
    undesirable_weight: float = 1.0
    simpo_gamma: float = 0.5  # SimPO's target margin
    orpo_nll: str = "full"  # ORPO's NLL over the chosen rows' prompt and answer (trl), or "answer" only
    center_rewards: float | None = None  # rm: coefficient of mean (r_c + r_r)^2
    sft_weight: float = 0.0  # dpo/ipo: + weight x the chosen answers' per-token NLL (RPO, Pang et al. 2024)


class PreferenceObjective(TrainObjective):
    """loss(model, PreferenceBatch) for one of DIRECT; logs the rewards, margins and accuracies trl logs."""

    shown = ("accuracy",)

    def __init__(self, method: str, settings: DirectSettings | None = None) -> None:
        if method not in DIRECT:
            raise ValueError(f"method={method!r} must be one of {', '.join(DIRECT)}")
        self.method, self.s = method, settings or DirectSettings()
        if self.s.dpo_loss not in losses.DPO_KINDS or self.s.dpo_loss == "ipo":
            raise ValueError(f"dpo_loss={self.s.dpo_loss!r} must be sigmoid, robust or hinge (ipo is its own method)")
        if self.s.dpo_loss == "robust" and not 0 <= self.s.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.s.label_smoothing} must be in [0, 0.5) for the robust loss")
        if self.s.orpo_nll not in ("full", "answer"):
            raise ValueError(f"orpo_nll={self.s.orpo_nll!r} must be 'full' or 'answer'")
        if not self.s.beta > 0:
            raise ValueError(f"beta={self.s.beta} must be > 0")
        self._fn = {"rm": self._rm, "dpo": self._dpo, "ipo": self._ipo, "kto": self._kto, "orpo": self._orpo,
                    "simpo": self._simpo}[method]
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def _log(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float().reshape(-1)
            v = v[~torch.isnan(v)]
            self._sums[k] += float(v.sum())
            self._counts[k] += v.numel()

    def metrics(self) -> dict[str, float]:
        out = {k: self._sums[k] / n for k, n in self._counts.items() if n}
        self._sums.clear()
        self._counts.clear()
        return out

    def loss(self, model: torch.nn.Module, batch: PreferenceBatch, index: int, reduction: str = "mean",
             rows: list[int] | None = None) -> tuple[torch.Tensor, int]:
        loss, count = self._fn(model, batch)
        return (loss * count if reduction == "sum" else loss), count

    def _pairs(self, x: torch.Tensor, b: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return x[b.chosen], x[b.rejected]

    def _rm(self, model, b: PreferenceBatch) -> tuple[torch.Tensor, int]:
        r = model(b.ids, b.real)
        rc, rr = self._pairs(r, b)
        margin = b.margin if bool((b.margin != 0).any()) else None
        loss = losses.reward_pair_loss(rc, rr, margin, self.s.center_rewards)
        self._log(accuracy=(rc > rr).float(), margin=rc - rr, reward=r)
        return loss, int(b.chosen.numel())

    def _policy(self, model, b: PreferenceBatch):
        lp = token_logps(model, b.ids, b.mask, entropy=True)
        self._log(entropy=(lp.entropy * lp.mask).sum() / lp.mask.sum())
        return lp

    def _reference(self, b: PreferenceBatch) -> torch.Tensor:
        if b.ref is None:
            raise ValueError(f"{self.method}: the batch has no reference log-probs; call attach_reference first")
        return b.ref

    def _log_rewards(self, rc: torch.Tensor, rr: torch.Tensor, lc: torch.Tensor, lr: torch.Tensor) -> None:
        self._log(rewards_chosen=rc, rewards_rejected=rr, accuracy=(rc > rr).float(), margin=rc - rr,
                  logps_chosen=lc.detach(), logps_rejected=lr.detach())

    def _dpo(self, model, b: PreferenceBatch, kind: str | None = None) -> tuple[torch.Tensor, int]:
        lp = self._policy(model, b)
        ref = self._reference(b)
        c, r = self._pairs(lp.summed, b)
        ref_c, ref_r = self._pairs(ref, b)
        len_c, len_r = self._pairs(lp.lengths.to(c.dtype), b)
        loss, rc, rr = losses.dpo_loss(c, r, ref_c, ref_r, beta=self.s.beta, kind=kind or self.s.dpo_loss,
                                       label_smoothing=self.s.label_smoothing, chosen_len=len_c, rejected_len=len_r)
        if self.s.sft_weight:  # keeps the chosen answers likely: DPO alone can lower both answers' log-probs
            m = lp.mask[b.chosen]
            nll = -(lp.logps[b.chosen] * m).sum() / m.sum()
            loss = loss + self.s.sft_weight * nll
            self._log(nll=nll)
        self._log_rewards(rc, rr, c, r)
        return loss, int(b.chosen.numel())

    def _ipo(self, model, b: PreferenceBatch) -> tuple[torch.Tensor, int]:
        return self._dpo(model, b, "ipo")

    def _kto(self, model, b: PreferenceBatch) -> tuple[torch.Tensor, int]:
        if b.kl_ids is None or b.kl_ref is None:
            raise ValueError("kto: the batch has no mismatched rows; build the data with data.preference.unpaired "
                             "and attach_reference")
        lp = self._policy(model, b)
        with torch.no_grad():
            kl = token_logps(model, b.kl_ids, b.kl_mask).summed
        desirable = b.labels == 1
        loss, rewards, z0 = losses.kto_loss(lp.summed, self._reference(b), desirable, kl, b.kl_ref, beta=self.s.beta,
                                            desirable_weight=self.s.desirable_weight,
                                            undesirable_weight=self.s.undesirable_weight)
        nan = torch.full_like(rewards, float("nan"))
        self._log(kl=z0, rewards_chosen=torch.where(desirable, rewards, nan),
                  rewards_rejected=torch.where(desirable, nan, rewards))
        return loss, int(b.labels.numel())

    def _orpo(self, model, b: PreferenceBatch) -> tuple[torch.Tensor, int]:
        lp = self._policy(model, b)
        c, r = self._pairs(lp.average, b)
        chosen_rows = b.chosen
        if self.s.orpo_nll == "full":  # every real token of the chosen rows after the first (trl's choice)
            m = b.real[chosen_rows, 1:]  # the tokens predicted: every real one after the first
        else:
            m = lp.mask[chosen_rows]
        nll = -(lp.picked[chosen_rows] * m).sum() / m.sum()
        loss, figs = losses.orpo_loss(c, r, nll, beta=self.s.beta)
        self._log_rewards(figs["chosen"], figs["rejected"], c, r)
        self._log(nll=figs["nll"], log_odds_ratio=figs["log_odds_ratio"], log_odds_chosen=figs["log_odds_chosen"])
        return loss, int(b.chosen.numel())

    def _simpo(self, model, b: PreferenceBatch) -> tuple[torch.Tensor, int]:
        lp = self._policy(model, b)
        c, r = self._pairs(lp.average, b)
        loss, rc, rr = losses.simpo_loss(c, r, beta=self.s.beta, gamma=self.s.simpo_gamma,
                                         label_smoothing=self.s.label_smoothing)
        self._log_rewards(rc, rr, c, r)
        return loss, int(b.chosen.numel())


@torch.no_grad()
def attach_reference(groups: list[PreferenceGroup], model: torch.nn.Module, pad_id: int, *, batch_size: int = 8,
                     progress: bool = False) -> None:
    """Give every group its reference log-probs: the summed log-prob of each answer under ``model`` (the
    frozen reference), and of the mismatched answer for KTO. Computed once, in batches."""
    was = model.training
    model.eval()
    chunks = range(0, len(groups), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="reference log-probs", unit="batch")
    for start in chunks:
        part = groups[start: start + batch_size]
        b = collate_groups(part, pad_id)
        dev = next(model.parameters()).device
        summed = token_logps(model, b.ids.to(dev), b.mask.to(dev)).summed.float().cpu().tolist()
        kl = token_logps(model, b.kl_ids.to(dev), b.kl_mask.to(dev)).summed.float().cpu().tolist() \
            if b.kl_ids is not None else None
        k = 0
        for i, g in enumerate(part):
            g.ref = summed[k: k + len(g.completions)]
            k += len(g.completions)
            if kl is not None:
                g.kl_ref = kl[i]
    model.train(was)


def reward_accuracy(model: torch.nn.Module, data: PreferenceData, batch_size: int = 16) -> dict[str, float]:
    """Held-out pair accuracy of a reward model (and the mean margin) over ``data.val``."""
    obj = PreferenceObjective("rm")
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in data.val_batches(batch_size, 1 << 30):
            obj.loss(model, b.to(next(model.parameters()).device), 0)
    model.train(was)
    m = obj.metrics()
    return {"accuracy": m.get("accuracy", float("nan")), "margin": m.get("margin", float("nan"))}
