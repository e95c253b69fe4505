"""The serving engine: many requests decoded together over a paged KV cache, one step at a time.

Iteration-level scheduling (Yu et al., 2022, "Orca"): the batch is rebuilt at every step, so a new request
joins between two decode steps and a finished one leaves at once, instead of a batch running until its
longest member ends. Each step spends a budget of ``max_step_tokens`` tokens: one for every running
sequence's next token first, then chunks of waiting prompts (chunked prefill), so a long prompt arriving
never stalls the sequences already streaming for more than one chunk.

Memory is a pool of fixed-size blocks (serve/blocks.py, keys and values in nn/kv_cache.PagedPool): a request
is admitted only when its prompt's blocks are free, shared prompt prefixes are read from the prefix cache
instead of computed (every full block is registered as it fills, generated ones too, so a preempted
sequence often finds its own blocks again), and when a growing sequence finds no free block the most
recently admitted one is preempted: its blocks go back and it is recomputed later (Kwon et al., 2023,
vLLM's recompute policy). Its tokens so far are kept, so its output is unchanged.

Each sequence samples with its own settings through generate/sampling.py, exactly as gu.generate does for
one row; each row of a batch may use its own LoRA adapter or soft prompt (serve/adapters.py).
The engine is synchronous and single-threaded: the HTTP server drives it from one thread (serve/runner.py).
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ..generate.causal import Detokenizer
from ..generate.config import GenerationConfig, end_ids
from ..generate.sampling import apply_repetition_penalty, next_token, no_stop_yet
from ..models.common import trusted_inputs
from ..nn.kv_cache import BlockCache, DecoderCache, PagedBatch, PagedKVCache, PagedPool
from .adapters import Adapters
from .blocks import BlockPool
from .params import ParamError, SamplingParams

TokenLogprob = tuple[float, dict[int, float]]  # (the token's log-probability, the top alternatives)


@dataclass(eq=False)
class Seq:
    """One sample being decoded: its tokens, where it stands and what it has produced."""

    id: str
    request_id: str
    index: int  # which of the request's n samples
    prompt: list[int]
    params: SamplingParams
    config: GenerationConfig  # params in the library's terms: what the sequence is decoded by
    adapter: str | None = None
    lora: int = -1
    output: list[int] = field(default_factory=list)
    computed: int = 0  # leading tokens whose keys and values are in the cache
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    preemptions: int = 0
    generator: torch.Generator | None = None
    detok: Detokenizer | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def pending(self) -> int:
        """Tokens still to run through the model before the next one can be sampled."""
        return len(self.prompt) + len(self.output) - self.computed

    def visible_text(self) -> str:
        """The text safe to show now: a stop string may still be completing in the last characters."""
        if self.finished or not self.config.stop_strings:
            return self.text
        hold = max(len(s) for s in self.config.stop_strings) - 1
        return self.text[: len(self.text) - hold] if hold else self.text


class Engine:
    """Continuous batching of a decoder-only ``model`` over a paged KV cache.

    ``n_blocks`` blocks of ``block_size`` positions hold every sequence's keys and values (default: what
    ``kv_bytes`` bytes hold). At most ``max_seqs`` sequences run at once and a step runs at most
    ``max_step_tokens`` tokens. ``fault`` (tests only) is called with each sequence in each step; what it
    raises fails that sequence alone, as any error inside one sequence's step does.
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, block_size: int = 16, n_blocks: int | None = None,
                 kv_bytes: int = 1 << 30, max_seqs: int = 64, max_step_tokens: int = 512,
                 prefix_caching: bool = True, adapters: dict[str, str] | None = None, fault=None) -> None:
        cfg = model.config
        if getattr(cfg, "arch", None) != "causal_lm":
            raise ValueError("the engine serves decoder-only models (a CausalLM)")
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        per_block = cfg.n_layers * 2 * block_size * cfg.n_kv_heads * cfg.head_dim * torch.finfo(dtype).bits // 8
        self.n_blocks = n_blocks or max(1, kv_bytes // per_block)
        self.block_size, self.max_seqs, self.max_step_tokens = block_size, max_seqs, max_step_tokens
        if max_step_tokens < max_seqs:
            raise ValueError(f"max_step_tokens={max_step_tokens} must be >= max_seqs={max_seqs}: each running "
                             "sequence needs one token of every step")
        self.watermark = max(1, self.n_blocks // 100)
        self.pool = BlockPool(self.n_blocks, block_size, prefix_caching=prefix_caching)
        self.layers = [PagedPool(self.n_blocks, block_size) for _ in range(cfg.n_layers)]
        self.adapters = Adapters(model)
        for name, folder in (adapters or {}).items():
            self.adapters.register(name, folder)
        self.eos = end_ids(cfg, tokenizer)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.fault = fault
        self._ids = itertools.count()
        self.stats = dict(prompt_tokens=0, generated_tokens=0, preemptions=0, steps=0, requests=0,
                          cached_tokens=0, aborted=0)

    # -- requests ------------------------------------------------------------------------------------------
    @property
    def context(self) -> int:
        bound = self.cfg.context_length
        return int(bound if bound != float("inf") else self.cfg.max_seq_len)

    def check(self, prompt: Sequence[int], params: SamplingParams, adapter: str | None = None) -> list[int]:
        """The prompt as the model will see it (with the adapter's virtual ids), after checking that it and
        ``params`` can be served; raises ParamError (field named) or KeyError (unknown adapter)."""
        params.check(self.cfg.vocab_size)
        ids = [int(t) for t in prompt]
        if not ids:
            raise ParamError("prompt", "needs at least one token")
        if any(not 0 <= t < self.cfg.vocab_size for t in ids):
            raise ParamError("prompt", f"token ids must be in [0, {self.cfg.vocab_size})")
        ids = self.adapters.prefix(adapter) + ids
        if len(ids) + params.max_tokens > self.context:
            raise ParamError("max_tokens" if len(ids) < self.context else "prompt",
                             f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {self.context}")
        if self.pool.blocks_needed(len(ids) + params.max_tokens) > self.n_blocks:
            raise ParamError("max_tokens", f"prompt + max_tokens = {len(ids) + params.max_tokens} tokens need "
                             f"more than the server's {self.n_blocks} KV blocks of {self.block_size}")
        if params.stop and self.tokenizer is None:
            raise ParamError("stop", "stop strings need a tokenizer")
        return ids

    def add(self, prompt: Sequence[int], params: SamplingParams | None = None, *, adapter: str | None = None,
            request_id: str | None = None) -> list[Seq]:
        """Queue a request; returns its n sequences (they fill in as steps run)."""
        params = params or SamplingParams()
        ids = self.check(prompt, params, adapter)
        lora = self.adapters.lora_index(adapter)
        rid = request_id or f"req-{next(self._ids)}"
        seqs = []
        config = params.generation_config(self.eos)
        for i in range(params.n):
            s = Seq(f"{rid}-{i}", rid, i, list(ids), params, config, adapter, lora)
            if params.seed is not None:
                s.generator = torch.Generator(device=self.device).manual_seed(params.seed + i)
            if self.tokenizer is not None:
                s.detok = Detokenizer(self.tokenizer)
            seqs.append(s)
        self.waiting.extend(seqs)
        self.stats["requests"] += 1
        return seqs

    def abort(self, request_id: str) -> None:
        """Stop every sequence of a request now (its client left): its blocks are freed at once."""
        for s in [*self.running, *self.waiting]:
            if s.request_id == request_id:
                self._finish(s, "abort")
                self.stats["aborted"] += 1

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def run(self, requests: Iterable[tuple[Sequence[int], SamplingParams]], adapters: Sequence[str | None] = ()
            ) -> list[list[Seq]]:
        """Serve a list of (prompt, params) to the end; returns each request's sequences."""
        out = []
        for i, (prompt, params) in enumerate(requests):
            out.append(self.add(prompt, params, adapter=adapters[i] if i < len(adapters) else None))
        while self.has_work:
            self.step()
        return out

    # -- one step --------------------------------------------------------------------------------------------
    def step(self) -> list[Seq]:
        """Schedule, run the model once per group, sample; returns the sequences that changed."""
        decode, prefill = self._schedule()
        changed: list[Seq] = []
        if decode:
            changed += self._forward([(s, 1) for s in decode])
        for group in _prefill_groups(prefill):
            changed += self._forward(group)
        self.stats["steps"] += 1
        return changed

    def _schedule(self) -> tuple[list[Seq], list[tuple[Seq, int]]]:
        budget, decode = self.max_step_tokens, []
        for seq in list(self.running):
            if seq not in self.running or seq.pending != 1:
                continue
            if not self._slot_for_last(seq):
                continue  # it was preempted itself
            decode.append(seq)
            budget -= 1
        prefill = []
        for seq in self.running:
            if seq.pending > 1 and budget > 0:
                n = min(seq.pending, budget)
                prefill.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            fresh = seq.params.prompt_logprobs is not None and not seq.output  # needs every prompt position
            # With others running, a few blocks stay free for their growth, so that admitting one does not
            # preempt another at the next step (vLLM's watermark); alone, a sequence may take them all.
            reserve = self.watermark * self.block_size if self.running else 0
            try:
                seq.computed = self.pool.allocate(seq, seq.tokens, reserve=reserve, use_cache=not fresh,
                                                  salt=_salt(seq))
            except MemoryError:
                break  # first come, first served: nothing overtakes the head of the queue
            self.waiting.popleft()
            self.stats["cached_tokens"] += seq.computed
            if fresh:
                seq.prompt_logprobs = []
            self.running.append(seq)
            n = min(seq.pending, budget)
            prefill.append((seq, n))
            budget -= n
        return decode, prefill

    def _slot_for_last(self, seq: Seq) -> bool:
        """A cache slot for the token ``seq`` feeds this step, preempting the latest admitted sequences
        while the pool is full; False when ``seq`` itself had to go."""
        table = self.pool.tables[seq]
        if len(table.tokens) == len(seq.tokens):
            return True
        while not self.pool.append(seq, seq.tokens[-1]):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Seq) -> None:
        self.pool.release(seq)
        self.running.remove(seq)
        seq.computed, seq.preemptions = 0, seq.preemptions + 1
        self.waiting.appendleft(seq)
        self.stats["preemptions"] += 1

    def _forward(self, group: list[tuple[Seq, int]]) -> list[Seq]:
        """One forward over the next n tokens of each sequence: decode steps (n = 1) or prefill chunks,
        left-padded to the longest (a product of many rows runs far faster per token on a CPU than one per
        sequence). A failing batch is run again row by row, so that only the failing sequence fails."""
        seqs, T = [s for s, _ in group], max(n for _, n in group)
        batch = PagedBatch([self.pool.block_table(s) for s in seqs], [s.computed for s in seqs], self.n_blocks,
                           self.block_size, [n for _, n in group])
        ids = [[0] * (T - n) + s.tokens[s.computed: s.computed + n] for s, n in group]
        pos = [[0] * (T - n) + list(range(s.computed, s.computed + n)) for s, n in group]
        keep_all = len(group) == 1 and _wants_prompt_logprobs(seqs[0])  # every position's logits
        t = partial(torch.tensor, device=self.device)
        try:
            if self.fault is not None:
                for s in seqs:
                    self.fault(s)
            with torch.no_grad(), trusted_inputs(), self.adapters.rows([s.lora for s in seqs]):
                cache = DecoderCache([BlockCache(self_kv=PagedKVCache(p, batch)) for p in self.layers])
                logits = self.model(t(ids), cache=cache, attention_mask=batch.key_mask(T, self.device),
                                    position_ids=t(pos), logits_to_keep=0 if keep_all else 1).float()
        except Exception as e:  # one request's failure must not stop the others
            if len(group) > 1:  # the rows rewrite the same cache slots alone
                return [c for item in group for c in self._forward([item])]
            self._fail(seqs[0], e)
            return seqs
        # logits [B, T or 1, V]: every row's last position is real
        return [c for r, (s, n) in enumerate(group) for c in self._advance(s, n, logits[r])]

    def _advance(self, seq: Seq, n: int, logits: torch.Tensor) -> list[Seq]:
        """``seq``'s next n tokens are in the cache (a prefill chunk, or the one token of a decode step);
        logits [n or 1, V] of their positions. Samples the next token once nothing is pending."""
        start, want_lp = seq.computed, _wants_prompt_logprobs(seq)
        seq.computed += n
        if want_lp:
            self._prompt_logprobs(seq, start, logits)
        self.pool.commit(seq, seq.computed)
        if seq.pending:
            return []  # more chunks to come
        self.stats["prompt_tokens"] += len(seq.prompt) if not seq.output else 0
        if seq.config.max_new_tokens == 0:
            self._finish(seq, "length")
            return [seq]
        self._guard(seq, self._sample, seq, logits[-1])
        return [seq]

    def _guard(self, seq: Seq, fn, *args) -> None:
        """Run ``fn`` for one sequence; an exception fails that sequence alone (finish_reason "error")."""
        try:
            fn(*args)
        except Exception as e:  # one request's failure must not stop the others
            self._fail(seq, e)

    def _fail(self, seq: Seq, e: Exception) -> None:
        seq.error = f"{type(e).__name__}: {e}"
        self._finish(seq, "error")

    def _prompt_logprobs(self, seq: Seq, start: int, logits: torch.Tensor) -> None:
        """Log-probabilities of prompt tokens start+1 .. start+n from the chunk's logits [n, V]."""
        if start == 0:
            seq.prompt_logprobs = [None]
        targets = seq.tokens[start + 1: start + 1 + logits.shape[0]]
        targets = targets[: max(0, len(seq.prompt) - len(seq.prompt_logprobs))]
        logp = torch.log_softmax(logits[: len(targets)], dim=-1)
        seq.prompt_logprobs += _pick(logp, targets, seq.params.prompt_logprobs)

    def _sample(self, seq: Seq, logits: torch.Tensor) -> None:
        """Choose ``seq``'s next token from its logits [V]."""
        c = seq.config
        x = logits[None]  # [1, V]
        if c.repetition_penalty != 1.0:
            x = apply_repetition_penalty(x, torch.tensor([seq.tokens], device=x.device), c.repetition_penalty)
        stops = c.eos_token_id  # a list: the model's eos (unless ignored) and the request's stop ids
        x = no_stop_yet(x, stops, len(seq.output), c.min_new_tokens)
        tok = int(next_token(x, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, generator=seq.generator))
        if seq.params.logprobs is not None:
            seq.logprobs += _pick(torch.log_softmax(logits[None], dim=-1), [tok], seq.params.logprobs)
        if seq.first_token is None:
            seq.first_token = time.perf_counter()
        seq.output.append(tok)
        self.stats["generated_tokens"] += 1
        if tok in stops:
            self._finish(seq, "stop")
            return
        if seq.detok is not None:
            seq.text += seq.detok.push(tok)
            if c.stop_strings and self._stopped_by_string(seq):
                return
        if len(seq.output) >= c.max_new_tokens or len(seq.tokens) >= self.context:
            self._finish(seq, "length")

    def _stopped_by_string(self, seq: Seq) -> bool:
        """Cut the text before the first stop string it now holds (the string itself is not returned)."""
        cut = min((i for i in (seq.text.find(s) for s in seq.config.stop_strings) if i >= 0), default=-1)
        if cut < 0:
            return False
        seq.text = seq.text[:cut]
        self._finish(seq, "stop")
        return True

    def _finish(self, seq: Seq, reason: str) -> None:
        if seq.finished:
            return
        if seq.detok is not None and reason in ("length",):
            seq.text += seq.detok.flush()
        seq.finish_reason = reason
        if seq in self.pool.tables:
            self.pool.release(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # -- what it holds -----------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Gauges and counters for /metrics."""
        return dict(waiting=len(self.waiting), running=len(self.running), kv_blocks_used=self.pool.used_blocks,
                    kv_blocks_total=self.n_blocks, prefix_cache_hits=self.pool.hits, **self.stats)


def _salt(seq: Seq) -> int:
    """What a sequence's cached keys depend on besides its tokens: its LoRA adapter (by name, which a
    runtime registration does not renumber). A soft prompt is in the tokens already."""
    return 0 if seq.lora < 0 else zlib.crc32(str(seq.adapter).encode()) + 1


def _wants_prompt_logprobs(seq: Seq) -> bool:
    return seq.params.prompt_logprobs is not None and len(seq.prompt_logprobs) < len(seq.prompt)


def _prefill_groups(chunks: list[tuple[Seq, int]], waste: float = 1.5) -> list[list[tuple[Seq, int]]]:
    """Chunks batched by similar length: a group's padded size (rows x longest) stays within ``waste`` times
    its real tokens. A chunk whose prompt log-probabilities are wanted runs alone (it keeps every logit)."""
    alone = [[c] for c in chunks if _wants_prompt_logprobs(c[0])]
    rest = sorted((c for c in chunks if not _wants_prompt_logprobs(c[0])), key=lambda c: -c[1])
    groups: list[list[tuple[Seq, int]]] = []
    for c in rest:
        g = groups[-1] if groups else None
        if g is not None and (len(g) + 1) * g[0][1] <= waste * (sum(n for _, n in g) + c[1]):
            g.append(c)
        else:
            groups.append([c])
    return groups + alone


def _pick(logp: torch.Tensor, targets: list[int], top: int | None) -> list[TokenLogprob]:
    """Per row of logp [N, V]: (log p of targets[i], the ``top`` most likely alternatives)."""
    out = []
    k = top or 0
    if k:
        vals, idx = logp.topk(k, dim=-1)
    for i, t in enumerate(targets):
        alts = dict(zip(idx[i].tolist(), vals[i].tolist(), strict=True)) if k else {}
        out.append((float(logp[i, t]), alts))
    return out
