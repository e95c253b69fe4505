"""Speculative decoding: a small draft model proposes tokens, the target model checks them all in one pass.

Decoding a large model is bound by reading its weights once per token. Here a cheap draft model guesses
the next k tokens one by one; the target then runs once over all k (plus the token before them) and so
gets its own next-token distribution at each of the k + 1 places for about the price of one step. The
longest prefix of guesses the target agrees with is kept, plus one token from the target itself, so
every round yields between 1 and k + 1 tokens (Leviathan et al., 2023; Chen et al., 2023).

Greedy: a guess is kept when it is the target's argmax, so the output is exactly the target's greedy
output. Sampling: guess d drawn from the draft's q is kept with probability min(1, p(d) / q(d)); at the
first rejection a token is drawn from the leftover distribution max(p - q, 0) (normalised), and after k
acceptances from the target's next distribution. Each token is then distributed exactly as the target
would sample it (the papers' theorem), under the same temperature / top-k / top-p, applied to both models.

A batch advances in lockstep: each round keeps as many guesses as the row that accepted the fewest (rows
that accepted more keep their next guess, which the target also picked or accepted), so a round's
output is valid for every row while the caches stay rectangular; the acceptance rate is that of the
worst row, which is why a batch of 1 gains the most.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..models.common import trusted_inputs
from ..nn.kv_cache import DecoderCache, cache_capacity
from .masks import GrowingMask
from .sampling import probabilities
from .stopping import Stopper


@dataclass
class SpeculativeStats:
    """Counts of a speculative generation, filled in when passed to generate(..., stats=...)."""

    rounds: int = 0  # target forward passes (each verifies one round of guesses)
    drafted: int = 0  # guesses proposed by the draft model
    accepted: int = 0  # guesses kept
    tokens: int = 0  # tokens produced

    @property
    def acceptance_rate(self) -> float:
        """Fraction of the draft's guesses the target kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens produced per target forward (1.0 is plain decoding)."""
        return self.tokens / self.rounds if self.rounds else 0.0


def check_draft(target: torch.nn.Module, draft: torch.nn.Module, num_draft_tokens: int,
                repetition_penalty: float, draft_confidence: float = 0.0) -> None:
    """Raise ValueError when the draft model cannot propose tokens for this target."""
    if getattr(getattr(draft, "config", None), "arch", None) != "causal_lm":
        raise ValueError("draft_model must be a decoder-only model (a gu.CausalLM)")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft_model has vocab_size={draft.config.vocab_size} but the target has "
                         f"{target.config.vocab_size}: the two must share one tokenizer")
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens={num_draft_tokens} must be >= 1")
    if not 0 <= draft_confidence < 1:
        raise ValueError(f"draft_confidence={draft_confidence} must be in [0, 1) (0: always draft num_draft_tokens)")
    if repetition_penalty != 1.0:
        raise ValueError("repetition_penalty is not supported with a draft model: drop one of the two")
    if "longrope" in (target.config.rope.scaling, draft.config.rope.scaling):
        raise ValueError("rope_scaling='longrope' (Phi-3.5) is not supported with a draft model: its switch to the "
                         "long frequencies recomputes the cache, which speculative decoding does not do")
    if next(draft.parameters()).device != next(target.parameters()).device:
        raise ValueError("draft_model and the target model must be on the same device")


class _Runner:
    """One model with its static cache, fed the tokens it has not seen yet."""

    def __init__(self, model: torch.nn.Module, capacity: int, padding: GrowingMask | None) -> None:
        # A rolling cache cannot take rejected positions back: always a static one (the window still
        # applies through the attention mask).
        self.skip = model.prefix_length  # a prefix-tuned model's own slots
        self.model, self.cache = model, DecoderCache.static(model.config.n_layers, capacity + self.skip)
        self.padding = padding

    @property
    def length(self) -> int:
        """Tokens of the sequence cached."""
        return max(0, self.cache.length - self.skip)

    def keep(self, length: int) -> None:
        """Forget the cached tokens from ``length`` on."""
        self.cache.crop(self.skip + length)

    def feed(self, seq: torch.Tensor, keep: int) -> torch.Tensor:
        """Run the positions of seq [B, L] after the cached ones; logits of the last ``keep`` [B, keep, V]."""
        a = self.length
        new = seq[:, a:]  # [B, t]
        mask = self.padding.upto(seq.shape[1]) if self.padding is not None else None
        pos = self.padding.positions(a, seq.shape[1]) if self.padding is not None else None
        with trusted_inputs():  # the prompt was checked by generate's setup; the rest are the models' own tokens
            return self.model(new, attention_mask=mask, position_ids=pos, cache=self.cache,
                              logits_to_keep=keep).float()


def _draft(drf: _Runner, seq: torch.Tensor, k: int, pick, min_confidence: float
           ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Up to k guesses of the draft after seq [B, L]: (seq with the guesses [B, L + k'], the draft's
    distribution of each guess when sampling)."""
    q, drafted = [], seq
    for j in range(k):
        draft_logits = drf.feed(drafted, 1)[:, -1]
        tok, dist = pick(draft_logits)
        q.append(dist)
        drafted = torch.cat([drafted, tok[:, None]], 1)  # [B, L + j + 1]
        # A guess the draft itself doubts will likely be rejected, and so would every later one: stop
        # here (the stopping rule reads the draft only, so the output distribution is unchanged).
        if min_confidence and j < k - 1:
            p_draft = dist if dist is not None else draft_logits.softmax(-1)
            if bool((p_draft.gather(-1, tok[:, None]) < min_confidence).any()):
                break
    return drafted, q


def _verify(logits: torch.Tensor, drafts: torch.Tensor, q: list[torch.Tensor | None], done: torch.Tensor, *,
            sample: bool, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
    """The target's verdict on the k guesses drafts [B, k] from its logits [B, k + 1, V]: (n, the guesses every
    row accepts, and the token [B] that follows them). Greedy: a guess stands if it is the target's argmax.
    Sampling (Leviathan et al., 2023; Chen et al., 2023): accept with probability min(1, p/q), and draw
    the first rejected place from the residual max(p - q, 0), which keeps the target's distribution."""
    B, k = drafts.shape
    if not sample:
        best = logits.argmax(-1)  # [B, k + 1]
        ok = drafts == best[:, :k]  # [B, k]
    else:
        p = probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)  # [B, k + 1, V]
        if k:
            qs = torch.stack(q, 1)  # [B, k, V]
            p_d = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # [B, k]
            q_d = qs.gather(-1, drafts[..., None]).squeeze(-1)
            u = torch.rand(p_d.shape, generator=generator, device=p_d.device)
            ok = u * q_d < p_d  # accept with probability min(1, p/q)
        else:
            ok = torch.zeros(B, 0, dtype=torch.bool, device=drafts.device)  # nothing drafted this round
    accepted = ok.long().cumprod(1).sum(1)  # [B]: each row's run of accepted guesses
    accepted = torch.where(done, torch.full_like(accepted, k), accepted)  # stopped rows agree
    n = int(accepted.min())
    if not sample:
        last = best[:, n]  # rows that accepted more: their guess n, which equals the target's argmax
    elif n == k:
        last = torch.multinomial(p[:, k], 1, generator=generator).squeeze(-1)
    else:
        residual = (p[:, n] - qs[:, n]).clamp(min=0)  # [B, V]
        empty = residual.sum(-1, keepdim=True) == 0  # only where the guess was accepted anyway
        residual = torch.where(empty, p[:, n], residual)
        redraw = torch.multinomial(residual, 1, generator=generator).squeeze(-1)
        last = torch.where(accepted > n, drafts[:, n], redraw)
    return n, last


@torch.no_grad()
def speculative_steps(target: torch.nn.Module, draft: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                      max_new_tokens: int, *, num_draft: int, temperature: float, top_k: int | None,
                      top_p: float | None, generator: torch.Generator | None, stopper: Stopper,
                      stats: SpeculativeStats | None = None, min_confidence: float = 0.0
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens [B], finished-before-this-token [B]) one token at a time, like causal._steps. A round
    drafts up to ``num_draft`` guesses, fewer when the draft gives its latest guess a probability below
    ``min_confidence`` (for any row)."""
    T = ids.shape[1]
    stats = stats if stats is not None else SpeculativeStats()
    capacity = cache_capacity(target.config, T + max_new_tokens + num_draft)
    # left padding: explicit mask and positions counting real tokens from 0
    padding = None if bool(mask.all()) else GrowingMask(mask, max_new_tokens + num_draft)
    tgt = _Runner(target, capacity, padding)
    drf = _Runner(draft, capacity, padding)
    sample = temperature > 0

    def pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits [B, V] -> (token [B], its distribution [B, V] when sampling)."""
        if not sample:
            return logits.argmax(-1), None
        p = probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return torch.multinomial(p, 1, generator=generator).squeeze(-1), p

    seq, produced = ids, 0
    while True:
        L = seq.shape[1]
        # Never guess past what is still wanted: the round's own target token is the last one.
        k = min(num_draft, max_new_tokens - produced - 1)
        drafted, q = _draft(drf, seq, k, pick, min_confidence)
        k = drafted.shape[1] - L
        drafts = drafted[:, L:]  # [B, k]
        logits = tgt.feed(drafted, k + 1)  # [B, k + 1, V]
        n, last = _verify(logits, drafts, q, stopper.done, sample=sample, temperature=temperature, top_k=top_k,
                          top_p=top_p, generator=generator)
        new = torch.cat([drafts[:, :n], last[:, None]], 1)  # [B, n + 1]
        stats.rounds, stats.drafted, stats.accepted = stats.rounds + 1, stats.drafted + k, stats.accepted + n
        # The target cached seq + all k guesses, the draft seq + k - 1: both keep seq + the n accepted.
        tgt.keep(L + n)
        drf.keep(min(drf.length, L + n))
        out = []
        for j in range(n + 1):
            tok, finished_before = stopper.push(new[:, j])
            out.append(tok)
            produced += 1
            stats.tokens += 1
            yield tok, finished_before
            if stopper.all_done or produced == max_new_tokens:
                return
        seq = torch.cat([seq, torch.stack(out, 1)], 1)
