"""Decoder-only generation with a KV cache: one prefill over the prompt, then one position per step.

The prompt runs once, filling a preallocated cache (nn/kv_cache.StaticKVCache) with every layer's keys
and values; each later step feeds only the newest token, whose query attends to the cached keys. Prompts
of different lengths are left-padded: the attention mask hides the pads, and positions count real
tokens only (a row's first real token is position 0), so every row decodes as it would alone. A row
stops at a stop token or stop string and is padded from then on; generation ends when all rows have
stopped or after max_new_tokens.

``generate`` returns the ids; ``stream`` yields each step's tokens (or, with a tokenizer, the new text of
each row) as they are chosen. ``generate_uncached`` re-runs the whole prefix for every token: slow, but
free of cache logic, and the reference the tests hold the cached path to.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch

from ..models.common import check_ids, trusted_inputs
from .compiled import FixedStep, backend_of, check_compilable
from .config import GenerationConfig
from .masks import GrowingMask
from .sampling import apply_repetition_penalty, check_sampling, next_token, no_stop_yet
from .speculative import SpeculativeStats, check_draft, speculative_steps
from .stopping import Stopper

Prompts = torch.Tensor | Sequence[Sequence[int]]
Steps = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (tokens [B], finished before this step [B]) per step


def _left_pad(input_ids: Prompts, attention_mask: torch.Tensor | None, pad: int, device) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Prompts as a left-padded [B, T] tensor and its mask (1 = token)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        if input_ids.shape[1] and bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("attention_mask has padding after a token: pad prompts on the left for generation")
        return input_ids, mask
    rows = [list(r) for r in input_ids]
    if not rows:
        raise ValueError("input_ids is empty: give at least one prompt")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), T), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if r:
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):] = 1
    return ids, mask


class ContextWarning(UserWarning):
    """Generation goes past the positions a model was trained for."""


@contextlib.contextmanager
def decoding(model: torch.nn.Module | None, rope_scaling: tuple[str, float] | None = None) -> Iterator[None]:
    """Eval mode, and optionally a RoPE scaling for this call only; both restored afterwards (nothing
    for model None)."""
    if model is None:
        yield
        return
    was_training, cfg = model.training, model.config
    if rope_scaling is not None:
        if cfg.pos != "rope":
            raise ValueError(f"rope_scaling={rope_scaling!r} needs a RoPE model; this one has pos={cfg.pos!r}")
        kind, factor = rope_scaling
        model.config = cfg.replace(rope_scaling=kind, rope_scaling_factor=float(factor))  # validates both
    model.eval()
    try:
        yield
    finally:
        model.config = cfg
        model.train(was_training)


def _prepare(model, input_ids, max_new_tokens, attention_mask, truncate, pad_token_id, eos, warn=True):
    """The prompts left-padded [B, T], their mask and the pad id, after the context checks."""
    cfg = model.config
    device = next(model.parameters()).device
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    ids, mask = _left_pad(input_ids, attention_mask, pad, device)
    if ids.shape[1] == 0 or not bool(mask.sum(1).all()):
        raise ValueError("every prompt needs at least one token (a BOS token if there is no text)")
    limit = cfg.context_length
    if ids.shape[1] > limit and not truncate:
        hint = ", or extend it: rope_scaling=('linear' or 'ntk', factor)" if cfg.pos == "rope" else ""
        raise ValueError(f"the prompt has {ids.shape[1]} tokens, more than the model's context of {limit}: "
                         f"shorten it, or pass truncate=True to keep its last tokens{hint}")
    keep = limit - max_new_tokens if cfg.pos == "learned" else limit  # learned positions end at max_seq_len
    if ids.shape[1] > keep:
        if not truncate:
            raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len="
                             f"{limit}, and learned positions have no row past it: lower max_new_tokens, shorten "
                             "the prompt or pass truncate=True")
        if keep < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in max_seq_len={limit}")
        ids, mask = ids[:, -keep:], mask[:, -keep:]
    if warn and cfg.pos == "rope" and ids.shape[1] + max_new_tokens > limit:
        # once per call, before any work: RoPE runs past its trained positions, but quality drops fast there
        warnings.warn(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) goes past the model's "
                      f"trained context of {limit} positions (max_seq_len={cfg.max_seq_len}"
                      f"{'' if cfg.rope.scaling == 'none' else ', with its rope scaling'}); beyond it outputs "
                      "degrade. Lower max_new_tokens, or extend the context: rope_scaling=('linear', factor)",
                      ContextWarning, stacklevel=4)
    return ids, mask, pad


@torch.no_grad()
def _steps(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, *, temperature: float,
           top_k: int | None, top_p: float | None, repetition_penalty: float, generator: torch.Generator | None,
           stopper: Stopper, min_new_tokens: int = 0, backend: str | None = None,
           capacity: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens [B], finished-before-this-step [B]) per step; the loop behind generate and stream.
    With a torch.compile ``backend`` the steps after the prompt run compiled (generate/compiled.py) in a
    cache of ``capacity`` slots."""
    T = ids.shape[1]
    cache = model.new_cache(capacity or T + max_new_tokens)
    # Left padding: an explicit mask [B, T + i] and positions that count real tokens from 0. Unpadded rows
    # take the default positions (after the cache): one shared RoPE table, not one per row.
    padding = None if bool(mask.all()) else GrowingMask(mask, max_new_tokens)
    seen, seen_mask = ids, mask
    step_ids, pos = ids, (padding.positions(0, T) if padding is not None else None)
    # LongRoPE switches to its long frequencies once the length passes the original context: the keys cached
    # under the short ones are stale then, so the whole sequence is run again once, as transformers does.
    switch = model.config.rope.original_max_seq_len if model.config.rope.scaling == "longrope" else None
    history = ids if switch is not None and T <= switch < T + max_new_tokens else None
    fixed = None
    for i in range(max_new_tokens):
        if history is not None and i and T + i - 1 == switch:  # this step is the first past the switch
            cache, step_ids = model.new_cache(T + max_new_tokens), history
            pos = padding.positions(0, T + i) if padding is not None else None
        # The prompt first, then one token per step; the mask covers cached + new positions: [B, T + i].
        step_mask = padding.upto(T + i) if padding is not None else None
        # the prompt was checked once in _setup; the model's own tokens need no check (no host sync)
        with trusted_inputs():
            if fixed is not None:
                logits = fixed(step_ids)  # [B, V]
            else:
                logits = model(step_ids, attention_mask=step_mask, position_ids=pos, cache=cache,
                               logits_to_keep=1)[:, -1].float()  # [B, V]
                if backend is not None:  # the prompt is in the cache: the one-token steps run compiled
                    fixed = FixedStep(model, cache, padding, T, backend)
        if repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty, seen_mask)
        logits = no_stop_yet(logits, stopper.eos_ids, i, min_new_tokens)
        tok = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        tok, finished_before = stopper.push(tok)
        yield tok, finished_before
        if stopper.all_done:
            return
        if repetition_penalty != 1.0:  # the history is only read by the penalty
            seen = torch.cat([seen, tok[:, None]], dim=1)
            seen_mask = torch.cat([seen_mask, (~finished_before).long()[:, None]], dim=1)
        if history is not None:
            history = torch.cat([history, tok[:, None]], dim=1)
        step_ids, pos = tok[:, None], (pos[:, -1:] + 1 if padding is not None else None)


def _setup(model, input_ids, config: GenerationConfig, *, attention_mask=None, tokenizer=None, generator=None,
           draft_model=None, stats=None) -> tuple[torch.Tensor, Callable[[], Steps]]:
    """Check everything, then return the left-padded prompts [B, T] and the decoding loop to run."""
    if getattr(getattr(model, "config", None), "arch", None) != "causal_lm":
        raise ValueError("generate() here is for decoder-only models; a Seq2Seq model has model.generate "
                         "(greedy or beam search)")
    config.check("causal_lm")
    c = config
    if c.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (tokenizer=...) to read the generated text")
    if draft_model is not None:
        check_draft(model, draft_model, c.num_draft_tokens, c.repetition_penalty, c.draft_confidence)
        if c.min_new_tokens:
            raise ValueError("min_new_tokens is not supported with a draft model: drop one of the two")
    eos = c.stop_ids(model.config)
    ids, mask, pad = _prepare(model, input_ids, c.max_new_tokens, attention_mask, c.truncate, c.pad_token_id, eos)
    check_ids(model.config, ids, None, extra_ids=model.virtual_tokens)  # once: the loops trust their own tokens
    backend = backend_of(c.compile)
    capacity = check_compilable(model, ids.shape[1], c.max_new_tokens, draft_model is not None) if backend else None
    if draft_model is not None:
        try:  # the draft reads the same positions: it must have room for them too
            _prepare(draft_model, ids, c.max_new_tokens, mask, False, pad, eos, warn=False)
        except ValueError as e:
            raise ValueError(f"draft_model: {e}") from None
    stopper = Stopper(ids.shape[0], eos=eos, pad=pad, stop_strings=list(c.stop_strings), tokenizer=tokenizer,
                      device=ids.device)
    opts = dict(temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, stopper=stopper,
                generator=c.generator(ids.device, generator))
    if draft_model is None:
        return ids, partial(_steps, model, ids, mask, c.max_new_tokens, repetition_penalty=c.repetition_penalty,
                            min_new_tokens=c.min_new_tokens, backend=backend, capacity=capacity, **opts)
    return ids, partial(speculative_steps, model, draft_model, ids, mask, c.max_new_tokens,
                        num_draft=c.num_draft_tokens, stats=stats, min_confidence=c.draft_confidence, **opts)


def generate(model: torch.nn.Module, input_ids: Prompts, config: GenerationConfig, *,
             attention_mask: torch.Tensor | None = None, tokenizer: Any = None,
             generator: torch.Generator | None = None, draft_model: torch.nn.Module | None = None,
             stats: SpeculativeStats | None = None) -> torch.Tensor:
    """Continue each prompt: input_ids [B, T] (left-padded, with attention_mask) or a list of token-id
    lists of any lengths -> ids [B, T' + n], the (left-padded) prompts followed by n <= max_new_tokens
    new tokens; a row that stopped early is filled with pad_token_id (default: the first stop id).

    temperature 0 is greedy; otherwise sampling with optional top_k, top_p and repetition_penalty, seeded
    by ``seed`` or a ``generator``. A row stops at any of ``eos_token_id`` or when its text (decoded with
    ``tokenizer``) contains one of ``stop_strings``. A prompt longer than the model's context
    (context_length) is an error, or is cut to its last tokens with ``truncate=True``. ``rope_scaling``
    ("linear" or "ntk", factor) extends a RoPE model's context for this call only.

    ``min_new_tokens``: the stop ids cannot be chosen before that many new tokens.

    ``draft_model`` (a smaller CausalLM with the same tokenizer) turns on speculative decoding: it guesses
    ``num_draft_tokens`` tokens per round (fewer when it gives its guess a probability below
    ``draft_confidence``) and this model verifies them in one pass; greedy output is identical and sampled
    output identically distributed (see generate.speculative). Pass a SpeculativeStats as ``stats`` to read
    the acceptance rate afterwards.

    ``compile=True`` runs the one-token steps through torch.compile (inductor; or name another backend):
    the first call for a batch size and length bucket compiles (see generate.compiled.compile_seconds),
    later ones reuse the graph. Tokens equal the eager loop's within float rounding.
    """
    with decoding(model, config.rope_scaling), decoding(draft_model):
        ids, steps = _setup(model, input_ids, config, attention_mask=attention_mask, tokenizer=tokenizer,
                            generator=generator, draft_model=draft_model, stats=stats)
        new = [tok for tok, _ in steps()]
    return torch.cat([ids, torch.stack(new, dim=1)], dim=1)


class Detokenizer:
    """Token ids in, the new text out, one token at a time, such that the pieces join to the decoded whole.

    Text ending inside a multi-byte character is held until a later token completes it. Each step decodes
    only the tokens since the last newline token, so the work per token stays bounded however long the
    text: a token that decodes to text ending in a newline (and not starting with a space, which some
    decoders strip at the start) starts the next window.

    One case cannot be streamed exactly: a byte-fallback decoder (Llama-2 style) judges a run of byte
    tokens as a whole, so a character already shown turns into replacement characters when invalid bytes
    follow it in the same run. Valid text streams exactly.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        piece, self.shown = text[len(self.shown):], text
        last = self._decode([token])
        if last.endswith("\n") and not last.startswith(" "):
            self.ids, self.shown = [token], last  # the next window starts at this newline
        return piece

    def flush(self) -> str:
        """Whatever is still held back (a character that never completed)."""
        rest = self._decode(self.ids)[len(self.shown):]
        self.shown += rest
        return rest


def stream(model: torch.nn.Module, input_ids: Prompts, max_new_tokens: int | None = None, *,
           generation_config: GenerationConfig | None = None, tokenizer: Any = None,
           attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
           draft_model: torch.nn.Module | None = None, stats: SpeculativeStats | None = None,
           **settings: Any) -> Iterator[torch.Tensor | list[str]]:
    """Like generate (the same settings: a GenerationConfig and / or its fields as keywords), one step at a
    time: yields the step's token ids [B], or with a ``tokenizer`` each row's new text (a list of B strings;
    "" for a row that has stopped, or whose last token ends inside a multi-byte character that a later token
    completes; what never completes comes in one last list), so that joining a row's pieces gives the decoded
    continuation."""
    config = GenerationConfig.of(generation_config, max_new_tokens, **settings)
    with decoding(model, config.rope_scaling), decoding(draft_model):
        ids, steps = _setup(model, input_ids, config, attention_mask=attention_mask, tokenizer=tokenizer,
                            generator=generator, draft_model=draft_model, stats=stats)
        rows = [Detokenizer(tokenizer) for _ in range(ids.shape[0])] if tokenizer is not None else []
        for tok, finished in steps():
            if tokenizer is None:
                yield tok
                continue
            yield ["" if finished[b] else rows[b].push(t) for b, t in enumerate(tok.tolist())]
        rest = [row.flush() for row in rows]
        if any(rest):
            yield rest


@torch.no_grad()
def generate_uncached(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
                      temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                      eos_token_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The plain way, one full forward over the whole prefix per token (no cache, no padding): the
    reference for tests. input_ids [B, T] -> [B, T + n]."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=1.0)
    ids, done = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    with decoding(model):
        for _ in range(max_new_tokens):
            logits = model(ids)[:, -1].float()  # [B, V]
            nxt = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
    return ids
