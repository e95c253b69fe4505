"""``generate``: the one entry point for every architecture, with transformers' keyword names.

A decoder-only model decodes with a KV cache (causal.py: greedy, sampling, speculative); an encoder-decoder
runs its encoder once and decodes greedily, by sampling or with beams (seq2seq.py). An encoder-only model
does not generate (fill_mask / features are its outputs). ``model.generate`` of every model class and
``gu.generate`` both land here.

Stopping: ``eos_token_id`` left at its default means the model's own stop ids for an encoder-decoder
(config.json's eos_token_id, as transformers does) and none for a decoder-only model (the CLI and chat pass
the tokenizer's); ``None`` or ``[]`` means never stop early; an id or a list of ids stops a row at any of
them. ``min_new_tokens`` makes the stop ids impossible until that many tokens have been generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from . import causal, seq2seq
from .speculative import SpeculativeStats
from .stopping import as_ids


class _ModelDefault:
    def __repr__(self) -> str:
        return "MODEL_DEFAULT"


MODEL_DEFAULT: Any = _ModelDefault()  # "the model's own setting": eos_token_id's default


def stop_ids(model: torch.nn.Module, eos_token_id: Any) -> list[int]:
    """The ids a generation stops at: ``eos_token_id`` as a list (None/[] -> none); MODEL_DEFAULT -> the
    config's eos ids for an encoder-decoder, none for a decoder-only model."""
    if eos_token_id is MODEL_DEFAULT:
        return model.config.eos_ids if model.config.arch == "seq2seq" else []
    return as_ids(eos_token_id)


def generate(model: torch.nn.Module, input_ids: causal.Prompts | None = None, max_new_tokens: int = 32, *,
             attention_mask: torch.Tensor | None = None, min_new_tokens: int = 0, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | Literal["never"] = False,
             eos_token_id: int | Sequence[int] | None = MODEL_DEFAULT, pad_token_id: int | None = None,
             stop_strings: Sequence[str] | None = None, tokenizer: Any = None, seed: int | None = None,
             generator: torch.Generator | None = None, truncate: bool = False,
             rope_scaling: tuple[str, float] | None = None, draft_model: torch.nn.Module | None = None,
             num_draft_tokens: int = 4, draft_confidence: float = 0.0,
             stats: SpeculativeStats | None = None, compile: bool | str = False,
             decoder_input_ids: torch.Tensor | None = None, suppress_tokens: Sequence[int] = (),
             begin_suppress_tokens: Sequence[int] = (), input_features: torch.Tensor | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens for each input, with any model that generates.

    Decoder-only (CausalLM): prompts [B, T] (left-padded, with attention_mask) or a list of id lists ->
    [B, T' + n], the prompts followed by the new tokens (see generate.causal.generate for the options;
    beams are not offered for decoders). Encoder-decoder (Seq2Seq): source ids [B, S] (attention_mask for
    their padding) -> target ids [B, 1 + n] starting with the decoder start token; greedy, sampling
    (temperature > 0, top_k, top_p) or beam search (num_beams > 1, length_penalty, early_stopping).
    A row that has stopped is filled with ``pad_token_id``; its default is the first stop id for a decoder
    (whose config pad id may be any token) and the config's pad id, else the first stop id, for an
    encoder-decoder. The sampling keywords and their meaning are transformers' own.

    Encoder-decoders also take ``decoder_input_ids`` (the forced start of every target, e.g. Whisper's
    <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>; returned in front of the new tokens),
    ``suppress_tokens`` (never generated) and ``begin_suppress_tokens`` (not as the first new token), and an audio
    model's ``input_features`` in place of ``input_ids``.
    """
    cfg = getattr(model, "config", None)
    arch = getattr(cfg, "arch", None)
    eos = stop_ids(model, eos_token_id) if cfg is not None else []
    if arch == "causal_lm":
        seq2seq_only = {"decoder_input_ids": decoder_input_ids is not None,
                        "input_features": input_features is not None, "suppress_tokens": bool(suppress_tokens),
                        "begin_suppress_tokens": bool(begin_suppress_tokens)}
        for name, given in seq2seq_only.items():
            if given:
                raise ValueError(f"{name} is for encoder-decoder models; this is a decoder-only model")
        if num_beams != 1:
            raise ValueError(f"num_beams={num_beams}: beam search is offered for encoder-decoder models; "
                             "decoder-only models decode greedily or by sampling (num_beams=1)")
        return causal.generate(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                               min_new_tokens=min_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, eos_token_id=eos, pad_token_id=pad_token_id,
                               stop_strings=stop_strings, tokenizer=tokenizer, seed=seed, generator=generator,
                               truncate=truncate, rope_scaling=rope_scaling, draft_model=draft_model,
                               num_draft_tokens=num_draft_tokens, draft_confidence=draft_confidence, stats=stats,
                               compile=compile)
    if arch == "seq2seq":
        if input_features is not None:
            input_ids = input_features
        unsupported = {"draft_model": draft_model is not None, "rope_scaling": rope_scaling is not None,
                       "truncate": truncate, "compile": bool(compile)}
        for name, given in unsupported.items():
            if given:
                raise ValueError(f"{name} is for decoder-only models; this is an encoder-decoder (Seq2Seq)")
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer (tokenizer=...) to read the generated text")
        if generator is None and seed is not None:
            generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        with causal.decoding(model):
            if num_beams == 1:
                return seq2seq.greedy(model, input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                      min_new_tokens=min_new_tokens, eos=eos, pad_token_id=pad_token_id,
                                      temperature=temperature, top_k=top_k, top_p=top_p,
                                      repetition_penalty=repetition_penalty, generator=generator,
                                      stop_strings=stop_strings or (), tokenizer=tokenizer,
                                      decoder_input_ids=decoder_input_ids, suppress_tokens=suppress_tokens,
                                      begin_suppress_tokens=begin_suppress_tokens)
            if temperature or stop_strings or repetition_penalty != 1.0:
                raise ValueError("beam search (num_beams > 1) is deterministic here: it takes no temperature, "
                                 "repetition_penalty or stop_strings; use num_beams=1 to sample")
            return seq2seq.beam_search(model, input_ids, attention_mask=attention_mask, num_beams=num_beams,
                                       max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                       length_penalty=length_penalty, early_stopping=early_stopping, eos=eos,
                                       pad_token_id=pad_token_id, decoder_input_ids=decoder_input_ids,
                                       suppress_tokens=suppress_tokens, begin_suppress_tokens=begin_suppress_tokens)
    if arch == "encoder":
        raise ValueError("an encoder-only model (BERT-style) does not generate text: use model.fill_mask(...) "
                         "for masked tokens or model.features(...) for sentence vectors")
    raise ValueError(f"generate() needs a groundup CausalLM or Seq2Seq model, got {type(model).__name__}")
