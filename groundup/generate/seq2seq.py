"""Greedy, sampled and beam-search decoding for Seq2Seq models.

The encoder runs once; every decoder step feeds only the newest token and a DecoderCache supplies the
self-attention keys/values of earlier steps and the cross-attention keys/values projected on the first.

Beam search keeps ``num_beams`` live hypotheses per input. Each step scores every (beam, token)
continuation by its summed log-probability, looks at the best 2 x num_beams, moves those that end (EOS,
or the length limit) into a per-input pool of finished hypotheses ranked by
``sum log p / generated_length ** length_penalty`` (Wu et al., 2016, simplified), and continues with the
best num_beams that did not end. An input is done when no live beam can still beat the worst of a full
pool (``early_stopping=False``, judged at the current length; ``"never"`` judges a positive length penalty
at the maximum length) or, with ``early_stopping=True``, as soon as its pool is full. These rules, and the
2 x num_beams candidate width, are the ones transformers' ``generate(num_beams=...)`` uses, so both return
the same sequences on the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models.common import trusted_inputs
from ..models.seq2seq import Seq2Seq
from .config import GenerationConfig
from .sampling import apply_repetition_penalty, next_token, no_stop_yet
from .stopping import Stopper

NEG = -1.0e9  # score of an impossible hypothesis (finite, so sums and divisions stay ordered)


def _pad_id(model: Seq2Seq, eos: list[int], pad_token_id: int | None) -> int:
    pad = pad_token_id if pad_token_id is not None else model.config.pad_token_id
    return int(pad if pad is not None else (eos[0] if eos else 0))


def _real_padding(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The source mask if it hides any padding, else None: judged once per call, not at every step."""
    return None if mask is None or bool(mask.all()) else mask


def _check(model: Seq2Seq, input_ids: torch.Tensor, config: GenerationConfig) -> None:
    if model.config.arch != "seq2seq":
        raise ValueError(f"encoder-decoder decoding needs a Seq2Seq model, got arch={model.config.arch!r}")
    audio = getattr(model, "audio_stem", None) is not None
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != (3 if audio else 2):
        raise ValueError("input_features must be a [batch, n_mels, frames] tensor of log-mel features" if audio else
                         "input_ids must be a [batch, seq_len] tensor of source token ids")
    config.check("seq2seq")


@torch.no_grad()
def greedy(model: Seq2Seq, input_ids: torch.Tensor, config: GenerationConfig, *,
           attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None, tokenizer: Any = None,
           decoder_input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Argmax (temperature 0) or sampled decoding: [B, S] source ids (or an audio model's features) -> [B, P + n]
    target ids starting with the forced prefix ``decoder_input_ids`` (default: the decoder start token).

    A sequence that has produced one of the stop ids (or whose text holds a stop string) is padded from
    then on; decoding stops when all have, or after ``max_new_tokens``.
    """
    _check(model, input_ids, config)
    c = config
    eos = c.stop_ids(model.config)
    pad = _pad_id(model, eos, c.pad_token_id)
    attention_mask = _real_padding(attention_mask)
    memory = model.encode(input_ids, attention_mask=attention_mask)
    cache = model.new_cache()
    out = start_ids(model, input_ids.shape[0], input_ids.device, decoder_input_ids)
    step_ids = out  # the whole prefix on the first step, then the newest token
    stopper = Stopper(input_ids.shape[0], eos=eos, pad=pad, stop_strings=list(c.stop_strings), tokenizer=tokenizer,
                      device=input_ids.device)
    for i in range(c.max_new_tokens):
        with trusted_inputs():  # the model's own tokens: no value checks, no host sync per step
            logits = model.decode(step_ids, memory, memory_mask=attention_mask, cache=cache)[:, -1].float()
        if c.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, out, c.repetition_penalty)
        logits = suppress(no_stop_yet(logits, eos, i, c.min_new_tokens), i, c.suppress_tokens,
                          c.begin_suppress_tokens)
        nxt = next_token(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, generator=generator)
        nxt, _ = stopper.push(nxt)
        out = torch.cat((out, nxt[:, None]), dim=1)
        step_ids = out[:, -1:]
        if stopper.all_done:
            break
    return out


def start_ids(model: Seq2Seq, batch: int, device: torch.device, decoder_input_ids: torch.Tensor | None
              ) -> torch.Tensor:
    """The forced decoder prefix [B, P]: ``decoder_input_ids`` (Whisper's <|startoftranscript|>, language, task,
    <|notimestamps|>), or the decoder start token alone."""
    if decoder_input_ids is None:
        return torch.full((batch, 1), model.decoder_start_token_id, dtype=torch.long, device=device)
    prefix = torch.as_tensor(decoder_input_ids, dtype=torch.long, device=device)
    if prefix.dim() == 1:
        prefix = prefix[None].expand(batch, -1)
    if prefix.dim() != 2 or prefix.shape[0] != batch or prefix.shape[1] == 0:
        raise ValueError(f"decoder_input_ids must be [batch={batch}, P >= 1] (or [P]), got {tuple(prefix.shape)}")
    lo, hi = int(prefix.min()), int(prefix.max())
    if lo < 0 or hi >= model.config.vocab_size:
        raise ValueError(f"decoder_input_ids hold id {lo if lo < 0 else hi}, outside [0, {model.config.vocab_size})")
    return prefix


def suppress(scores: torch.Tensor, step: int, suppress_tokens: Sequence[int], begin_suppress_tokens: Sequence[int]
             ) -> torch.Tensor:
    """Scores [N, V] with ``suppress_tokens`` impossible at every step and ``begin_suppress_tokens`` at the first new
    one (transformers' SuppressTokens and SuppressTokensAtBegin processors; Whisper's generation config lists
    both)."""
    ids = list(suppress_tokens) + (list(begin_suppress_tokens) if step == 0 else [])
    if not ids:
        return scores
    scores = scores.clone()
    scores[:, ids] = float("-inf")
    return scores


def _pick(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` [B, k] of t [B, n, ...] along dim 1 -> [B, k, ...]."""
    shape = index.shape + t.shape[2:]
    return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(shape))


@torch.no_grad()
def beam_search(model: Seq2Seq, input_ids: torch.Tensor, config: GenerationConfig, *,
                attention_mask: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Beam search: [B, S] source ids -> [B, P + n] best target ids (the forced prefix first, padded after EOS).

    ``length_penalty`` > 0 favours longer outputs, < 0 shorter ones; see the module docstring for the
    stopping rules.
    """
    _check(model, input_ids, config)
    c, eos = config, config.stop_ids(model.config)
    pad, length_penalty, early_stopping = _pad_id(model, eos, c.pad_token_id), c.length_penalty, c.early_stopping
    eos_t = torch.tensor(eos, dtype=torch.long, device=input_ids.device)
    B, N, dev = input_ids.shape[0], c.num_beams, input_ids.device
    K = 2 * N  # candidates examined per step: enough that N survive even if N of them end
    prefix = start_ids(model, B, dev, decoder_input_ids)  # [B, P]
    P = prefix.shape[1]
    max_len = P + c.max_new_tokens
    attention_mask = _real_padding(attention_mask)
    memory = model.encode(input_ids, attention_mask=attention_mask).repeat_interleave(N, dim=0)  # [B*N, S, C]
    mem_mask = attention_mask.repeat_interleave(N, dim=0) if attention_mask is not None else None
    cache = model.new_cache()

    seqs = torch.full((B, N, max_len), pad, dtype=torch.long, device=dev)  # live hypotheses
    seqs[:, :, :P] = prefix[:, None]
    scores = torch.zeros(B, N, device=dev)
    scores[:, 1:] = NEG  # all beams start identical: only the first may expand on step 1
    done_seqs, done_scores = seqs.clone(), torch.full((B, N), NEG, device=dev)  # pool of finished hypotheses
    done_len = torch.zeros(B, N, dtype=torch.long, device=dev)
    done_flag = torch.zeros(B, N, dtype=torch.bool, device=dev)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)
    first_n = torch.arange(K, device=dev) < N  # only the best N candidates may enter the pool
    batch_base = torch.arange(B, device=dev)[:, None] * N

    for t in range(P, max_len):  # t = position being generated; g = new tokens after this step
        g = t - P + 1
        step = seqs[:, :, :P].reshape(B * N, P) if t == P else seqs[:, :, t - 1].reshape(B * N, 1)
        with trusted_inputs():
            logits = model.decode(step, memory, memory_mask=mem_mask, cache=cache)
        # as transformers: the min-length rule acts on the log-probabilities, which are not renormalised
        logp = no_stop_yet(torch.log_softmax(logits[:, -1].float(), dim=-1), eos, g - 1, c.min_new_tokens)  # [B*N, V]
        logp = suppress(logp, g - 1, c.suppress_tokens, c.begin_suppress_tokens)
        V = logp.shape[-1]
        total = logp.view(B, N, V) + scores[:, :, None]
        top, flat = total.view(B, N * V).topk(K)  # [B, K]
        beam, token = flat // V, flat % V
        cand = _pick(seqs, beam).clone()  # [B, K, max_len]
        cand[:, :, t] = token
        ends = torch.full_like(token, t + 1 >= max_len, dtype=torch.bool)
        if eos:
            ends |= torch.isin(token, eos_t)

        # continue with the best N candidates that did not end
        live = top + ends.float() * NEG
        keep = live.topk(N).indices  # [B, N]
        seqs, scores = _pick(cand, keep), live.gather(1, keep)
        src = beam.gather(1, keep)  # which previous beam each survivor extends

        # candidates that ended enter the pool with their length-normalised score
        norm = top / (g**length_penalty)
        pool_full = done_flag.all(dim=1, keepdim=True) & (early_stopping is True)
        norm = norm + pool_full.float() * NEG + (~improvable).float() * NEG + (~(ends & first_n)).float() * NEG
        merged = torch.cat((done_scores, norm), dim=1)
        best = merged.topk(N).indices
        done_scores = merged.gather(1, best)
        done_seqs = _pick(torch.cat((done_seqs, cand), dim=1), best)
        done_len = torch.cat((done_len, torch.full_like(token, t)), dim=1).gather(1, best)  # the last position
        done_flag = torch.cat((done_flag, ends & first_n), dim=1).gather(1, best)

        # beams of one input share its encoder output, so only the self-attention cache moves
        cache.reorder((src + batch_base).view(-1), cross=False)
        # can a live beam still beat the worst finished one? (judged at the current length unless "never")
        length = (max_len - P) if (early_stopping == "never" and length_penalty > 0) else g
        best_possible = scores[:, :1] / (length**length_penalty)
        worst = torch.where(done_flag, done_scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_possible > worst).any(dim=1, keepdim=True)
        if not bool(improvable.any()) or bool(ends.all()) or (early_stopping is True and bool(done_flag.all())):
            break

    n = int(done_len[:, 0].max())
    return done_seqs[:, 0, : 1 + n]
