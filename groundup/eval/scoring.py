"""Batched scoring with a decoder: log-likelihoods of continuations, rolling log-likelihoods of whole texts,
and greedy generation until stop strings, with lm-evaluation-harness's conventions so that its numbers and
ours can be compared one to one.

Conventions (those of the harness's `hf` backend, so a request gives the same number through either):

- a (context, continuation) pair is tokenized whole and split where the context's own tokens end; trailing
  spaces of the context move to the continuation; an empty context is replaced by the prefix token
  (BOS, else EOS);
- context + continuation longer than the window loses tokens on the left (the harness warns too);
- a rolling log-likelihood scores every token of a text once, in disjoint windows of the model's length,
  the first conditioned on the prefix token.

What is faster here: requests that share a context (the choices of a multiple-choice question) run the
context once and only their continuations after it, from the context's KV cache; and the head is applied
only at the scored positions, in fp32 chunks, never to all [B, T, V] logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from tqdm.auto import tqdm

from ..generate import generate
from ..generate.config import end_ids

log = logging.getLogger("groundup.eval")

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def rolling_windows(ids: Sequence[int], prefix: int, window: int) -> Iterator[Pair]:
    """Disjoint windows that score every id once: (context, scored) pairs whose context is what precedes
    the scored ids in a window of at most ``window`` inputs; the first window starts after ``prefix``."""
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    ids = list(ids)
    done = 0
    while done < len(ids):
        end = min(len(ids), done + window)
        inputs = ([prefix, *ids])[max(0, end - window): end]  # the window's inputs: the ids before each target
        yield inputs[: len(inputs) - (end - done) + 1], ids[done:end]
        done = end


@dataclass
class _Item:
    """One request: the inputs before the scored ids split as prefix (shared) + rest (its own)."""

    index: int
    shared: tuple[int, ...]  # inputs up to the one that predicts the first scored id
    own: list[int]  # the remaining inputs (the scored ids but the last)
    targets: list[int]


@dataclass
class Scorer:
    """Scores requests with a CausalLM and a groundup Tokenizer.

    ``max_length``: the window (default: the model's context); ``batch_size``: rows per forward;
    ``prefix_ids``: ids that precede every input and are never scored (a soft prompt's virtual ids);
    ``share_contexts``: run a context shared by several requests once.
    """

    model: torch.nn.Module
    tokenizer: object
    max_length: int | None = None
    batch_size: int = 16
    prefix_ids: Sequence[int] = ()
    share_contexts: bool = True
    progress: bool = True
    truncated: int = field(default=0, init=False)  # requests that lost tokens on the left, so far

    def __post_init__(self) -> None:
        cfg = self.model.config
        if getattr(cfg, "arch", None) != "causal_lm":
            raise ValueError(f"scoring needs a decoder-only model (CausalLM); this is a {type(self.model).__name__}")
        limit = cfg.context_length
        self.max_length = int(self.max_length or limit)
        if self.max_length > limit:
            raise ValueError(f"max_length={self.max_length} is past the model's context of {limit} positions")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        self.max_length -= len(self.prefix_ids)
        if self.max_length < 2:
            raise ValueError(f"the window leaves {self.max_length} positions after the {len(self.prefix_ids)} "
                             "prefix ids: raise max_length")

    # -- tokenization, the harness's way ------------------------------------------------------------------
    @cached_property
    def _prefix_text(self) -> str:
        return self.tokenizer.decode([self.prefix_token_id])  # read once: encode() asks for every text

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes and what a rolling text is conditioned on: BOS, else EOS."""
        tok = self.tokenizer
        pid = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if pid is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")
        return pid

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text``: the tokenizer's special tokens unless the text starts with the prefix token
        already (or ``add_special_tokens`` says otherwise); special tokens written in the text are matched."""
        tok = self.tokenizer
        if add_special_tokens is None:
            add_special_tokens = not text.startswith(self._prefix_text)
        return tok.encode(text, allowed_special="all", add_special_tokens=add_special_tokens)

    def encode_pair(self, context: str, continuation: str) -> Pair:
        """(context ids, continuation ids) as the harness splits them."""
        if not context:
            cont = self.encode(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError("an empty context with an empty continuation has nothing to score")
            return ([self.prefix_token_id], cont) if cont[0] != self.prefix_token_id else (cont[:1], cont[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx):]

    # -- log-likelihoods ------------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding would produce it) per request."""
        return self.loglikelihood_ids([self.encode_pair(c, x) for c, x in requests])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """log p(text) per text, every token scored once (after the prefix token)."""
        pairs, owner = [], []
        for i, text in enumerate(texts):
            for pair in rolling_windows(self.encode(text, add_special_tokens=False), self.prefix_token_id,
                                        self.max_length):
                pairs.append(pair)
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, (lp, _) in zip(owner, self.loglikelihood_ids(pairs, share=False), strict=True):
            totals[i] += lp
        return totals

    def loglikelihood_ids(self, pairs: Sequence[Pair], *, share: bool | None = None) -> list[tuple[float, bool]]:
        """The log-likelihoods of (context ids, continuation ids) pairs, in their order."""
        items = [self._item(i, ctx, cont) for i, (ctx, cont) in enumerate(pairs)]
        share = self.share_contexts if share is None else share
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for it in items:  # requests with the same inputs before their first scored id run those once
            groups.setdefault(it.shared if share else (it.index,), []).append(it)
        singles = [g[0] for g in groups.values() if len(g) == 1]
        shared = [g for g in groups.values() if len(g) > 1]
        out: list[tuple[float, bool] | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc="scoring", disable=not self.progress or len(items) < 2, leave=False)
        with torch.no_grad():
            # longest first: a batch is padded to its first row, and a batch too big fails at once
            singles.sort(key=lambda it: -(len(it.shared) + len(it.own)))
            for i in range(0, len(singles), self.batch_size):
                chunk = singles[i: i + self.batch_size]
                for it, res in zip(chunk, self._score_whole(chunk), strict=True):
                    out[it.index] = res
                bar.update(len(chunk))
            shared.sort(key=lambda g: -(len(g[0].shared) + max(len(it.own) for it in g)))
            # a chunk: up to batch_size contexts, and their requests' own inputs (short) up to 4x that many rows
            for chunk in _batches(shared, self.batch_size, 4 * self.batch_size):
                for it, res in self._score_shared(chunk):
                    out[it.index] = res
                bar.update(sum(len(g) for g in chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _item(self, index: int, ctx: list[int], cont: list[int]) -> _Item:
        if not ctx or not cont:
            raise ValueError(f"request {index}: both the context and the continuation need at least one token")
        if len(cont) > self.max_length:
            raise ValueError(f"request {index}: the continuation has {len(cont)} tokens, more than the window of "
                             f"{self.max_length}")
        inputs = (ctx + cont)[:-1]
        if len(inputs) > self.max_length:  # the harness's rule: keep the last max_length inputs
            inputs = inputs[-self.max_length:]
            self.truncated += 1
            if self.truncated == 1:
                log.warning("a context and continuation are longer than the window of %d tokens: truncating "
                            "from the left, as lm-evaluation-harness does (counted in Scorer.truncated)",
                            self.max_length)
        cut = len(inputs) - len(cont) + 1
        return _Item(index, tuple(self.prefix_ids) + tuple(inputs[:cut]), inputs[cut:], cont)

    def _run(self, ids: list[list[int]], mask_left: bool, **kw) -> torch.Tensor:
        """Hidden states [B, T, C] of rows padded to one length (on the left or the right)."""
        width = max(len(r) for r in ids)
        pad = 0
        rows = [([pad] * (width - len(r)) + r) if mask_left else (r + [pad] * (width - len(r))) for r in ids]
        mask = [([0] * (width - len(r)) + [1] * len(r)) if mask_left else ([1] * len(r) + [0] * (width - len(r)))
                for r in ids]
        device = next(self.model.parameters()).device
        t, m = torch.tensor(rows, device=device), torch.tensor(mask, device=device)
        kw.setdefault("attention_mask", m)
        if mask_left:
            kw.setdefault("position_ids", (m.cumsum(-1) - 1).clamp(min=0))
        return self.model.hidden(t, **kw)[0]

    def _score_whole(self, chunk: list[_Item]) -> list[tuple[float, bool]]:
        """One forward per row: inputs right-padded, the head at the last len(targets) real positions."""
        seqs = [list(it.shared) + it.own for it in chunk]
        h = self._run(seqs, mask_left=False)  # [B, T, C]
        picks = [h[b, len(s) - len(it.targets): len(s)] for b, (s, it) in enumerate(zip(seqs, chunk, strict=True))]
        return self._judge(picks, [it.targets for it in chunk])

    def _score_shared(self, chunk: list[list[_Item]]) -> list[tuple[_Item, tuple[float, bool]]]:
        """Contexts once (left-padded, their KV cache kept), then every request's own inputs after its
        context's cache, right-padded; the first target is predicted by the context's last position."""
        ctxs = [list(g[0].shared) for g in chunk]
        cache = self.model.new_cache()
        h_ctx = self._run(ctxs, mask_left=True, cache=cache)[:, -1]  # [G, C]: left padding ends every row
        members = [it for g in chunk for it in g]
        owner = torch.tensor([gi for gi, g in enumerate(chunk) for _ in g], device=h_ctx.device)
        picks: list[torch.Tensor] = [h_ctx[gi: gi + 1] for gi, g in enumerate(chunk) for _ in g]
        if any(it.own for it in members):
            width = max(len(c) for c in ctxs)
            cache.reorder(owner)  # [G, ...] -> [R, ...]: each request reads its own context's keys
            lens = torch.tensor([len(c) for c in ctxs], device=h_ctx.device)[owner]  # [R]
            own = [it.own or [0] for it in members]
            span = max(len(o) for o in own)
            ctx_mask = (torch.arange(width, device=h_ctx.device) >= (width - lens)[:, None]).long()  # [R, width]
            own_mask = torch.tensor([[1] * len(o) + [0] * (span - len(o)) for o in own], device=h_ctx.device)
            pos = lens[:, None] + torch.arange(span, device=h_ctx.device)  # [R, span]: after each context
            h_own = self._run(own, mask_left=False, cache=cache, position_ids=pos,
                              attention_mask=torch.cat([ctx_mask, own_mask], 1))  # [R, span, C]
            picks = [torch.cat([p, h_own[r, : len(it.own)]]) for r, (p, it) in enumerate(zip(picks, members,
                                                                                             strict=True))]
        return list(zip(members, self._judge(picks, [it.targets for it in members]), strict=True))

    def _judge(self, picks: list[torch.Tensor], targets: list[list[int]]) -> list[tuple[float, bool]]:
        """Hidden states [n_i, C] predicting targets [n_i] -> (sum of fp32 log-probs, all greedy) per row."""
        h = torch.cat(picks)  # [N, C]
        tgt = torch.tensor([t for ts in targets for t in ts], device=h.device)
        lp, hit = torch.empty(len(tgt)), torch.empty(len(tgt), dtype=torch.bool)
        for rows, logp in head_logprobs(self.model, h):
            lp[rows] = logp.gather(1, tgt[rows, None])[:, 0].cpu()
            hit[rows] = (logp.argmax(-1) == tgt[rows]).cpu()
        out, at = [], 0
        for ts in targets:
            out.append((float(lp[at: at + len(ts)].double().sum()), bool(hit[at: at + len(ts)].all())))
            at += len(ts)
        return out

    # -- generation -------------------------------------------------------------------------------------------
    def generate_until(self, contexts: Sequence[str], until: Sequence[str] = (), max_gen_toks: int = 256,
                       on_result: Callable[[int, str], None] | None = None, **sampling: Any) -> list[str]:
        """Greedy continuations of each context (or sampled: generate()'s ``temperature``, ``top_k``, ``top_p``,
        ``seed``), cut before the first of the ``until`` strings (and the end of text); the context keeps
        its last (window - max_gen_toks) tokens."""

        tok = self.tokenizer
        keep = self.max_length - max_gen_toks
        if keep < 1:
            raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room for a context in the window of "
                             f"{self.max_length} tokens")
        eos_text = tok.decode([tok.eos_token_id]) if tok.eos_token_id is not None else None
        stops = [s for s in until if s] + ([eos_text] if eos_text and eos_text not in until else [])
        prompts, cut = [], 0
        for c in contexts:
            ids = self.encode(c)
            cut += len(ids) > keep
            prompts.append(list(self.prefix_ids) + ids[-keep:])
        if cut:
            self.truncated += cut
            log.warning("%d of %d contexts are longer than %d tokens (window %d - max_gen_toks %d): keeping their "
                        "last tokens, as lm-evaluation-harness does", cut, len(contexts), keep, self.max_length,
                        max_gen_toks)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        eos = end_ids(self.model.config, tok)
        for start in tqdm(range(0, len(order), self.batch_size), desc="generating", leave=False,
                          disable=not self.progress or len(order) <= self.batch_size):
            batch = order[start: start + self.batch_size]
            rows = [prompts[i] for i in batch]
            with torch.no_grad():
                ids = generate(self.model, rows, max_gen_toks, eos_token_id=eos or None,
                               pad_token_id=eos[0] if eos else 0, stop_strings=stops or None,
                               tokenizer=tok if stops else None, **sampling)
            width = max(len(r) for r in rows)
            for i, new in zip(batch, ids[:, width:].tolist(), strict=True):
                if eos:
                    new = new[: next((k for k, t in enumerate(new) if t in eos), len(new))]
                text = tok.decode(new, skip_special_tokens=True)
                for s in stops:
                    text = text.split(s)[0]
                out[i] = text
                if on_result is not None:
                    on_result(i, text)
        return out


def head_logprobs(model: torch.nn.Module, h: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, fp32 log-probabilities [n, V]) of hidden states h [N, C] through the model's head, a chunk of
    rows at a time, so that at most ~64 MB of logits exist at once."""
    step = max(1, (1 << 24) // model.config.vocab_size)
    for i in range(0, len(h), step):
        yield slice(i, i + step), model.head(h[i: i + step]).float().log_softmax(-1)


def _batches(groups: list[list[_Item]], contexts: int, rows: int) -> Iterator[list[list[_Item]]]:
    """Runs of consecutive groups: at most ``contexts`` groups whose requests add up to at most ``rows`` (one
    group alone may exceed it)."""
    chunk: list[list[_Item]] = []
    n = 0
    for g in groups:
        if chunk and (n + len(g) > rows or len(chunk) == contexts):
            yield chunk
            chunk, n = [], 0
        chunk.append(g)
        n += len(g)
    if chunk:
        yield chunk
