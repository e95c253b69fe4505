"""Log-probabilities of answer tokens under a causal model, the quantity every alignment method is built on.

Rows are prompt + answer, right-padded (ids [R, T]) with a mask [R, T] of answer tokens. Position t - 1
predicts token t, so the answer token at t is scored by the logits at t - 1: the results are [R, T - 1],
zero off the answer. The head is applied in fp32 after the last hidden states, divided by a temperature
when sampling used one (PPO's ratios must compare the distribution that was sampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenLogps:
    """logps [R, T - 1] (zero off the answer), mask [R, T - 1] (the answer tokens scored), entropy
    [R, T - 1] (of the whole next-token distribution; None unless asked), hidden [R, T - 1, C] (the
    states the head read, for a value head), aux (the MoE balance loss), picked [R, T - 1] (the log-prob
    of every next token, prompt and padding included)."""

    logps: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None
    hidden: torch.Tensor
    aux: torch.Tensor
    picked: torch.Tensor

    @property
    def summed(self) -> torch.Tensor:
        """[R] the answers' summed log-probs."""
        return self.logps.sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        """[R] the answers' token counts."""
        return self.mask.sum(-1)

    @property
    def average(self) -> torch.Tensor:
        """[R] the answers' log-probs per token."""
        return self.summed / self.lengths.clamp(min=1)


def token_logps(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0,
                entropy: bool = False) -> TokenLogps:
    """Score the answer tokens of rows ids [R, T] / mask [R, T] under ``model`` (a CausalLM)."""
    hidden, aux = model.hidden(ids[:, :-1])  # [R, T - 1, C]
    logits = model.head(hidden).float()  # [R, T - 1, V]
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)  # [R, T - 1]
    target = ids[:, 1:]
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - logz
    m = mask[:, 1:]
    ent = None
    if entropy:
        with torch.no_grad():
            p = torch.softmax(logits, dim=-1)
            ent = logz - (p * logits).sum(-1)
    return TokenLogps(torch.where(m, picked, torch.zeros_like(picked)), m, ent, hidden, aux, picked)
