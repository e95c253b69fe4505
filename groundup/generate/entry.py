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

from typing import Any

import torch

from . import causal, seq2seq
from .config import MODEL_DEFAULT, GenerationConfig
from .speculative import SpeculativeStats

__all__ = ["MODEL_DEFAULT", "GenerationConfig", "continuations", "generate"]


def generate(model: torch.nn.Module, input_ids: causal.Prompts | None = None, max_new_tokens: int | None = None, *,
             generation_config: GenerationConfig | None = None, attention_mask: torch.Tensor | None = None,
             tokenizer: Any = None, generator: torch.Generator | None = None,
             draft_model: torch.nn.Module | None = None, stats: SpeculativeStats | None = None,
             decoder_input_ids: torch.Tensor | None = None, input_features: torch.Tensor | None = None,
             **settings: Any) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens for each input, with any model that generates.

    The settings are ``generation_config`` (a GenerationConfig: transformers' names) with any of its fields
    given here as keywords (``temperature=0.7, top_p=0.9``); an unknown keyword is refused with the list.
    Decoder-only (CausalLM): prompts [B, T] (left-padded, with attention_mask) or a list of id lists ->
    [B, T' + n], the prompts followed by the new tokens (see generate.causal.generate; beams are not offered
    for decoders; ``draft_model`` turns on speculative decoding, ``stats`` reads its acceptance rate).
    Encoder-decoder (Seq2Seq): source ids [B, S] (attention_mask for their padding) -> target ids [B, 1 + n]
    starting with the decoder start token; greedy, sampling (temperature > 0, top_k, top_p) or beam search
    (num_beams > 1, length_penalty, early_stopping). A row that has stopped is filled with ``pad_token_id``;
    its default is the first stop id for a decoder (whose config pad id may be any token) and the config's
    pad id, else the first stop id, for an encoder-decoder. ``tokenizer`` reads the text for stop_strings.

    Encoder-decoders also take ``decoder_input_ids`` (the forced start of every target, e.g. Whisper's
    <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>; returned in front of the new tokens) and
    an audio model's ``input_features`` in place of ``input_ids``.
    """
    config = GenerationConfig.of(generation_config, max_new_tokens, **settings)  # checked by the loop it reaches
    arch = getattr(getattr(model, "config", None), "arch", None)
    if arch == "causal_lm":
        for name, given in (("decoder_input_ids", decoder_input_ids is not None),
                            ("input_features", input_features is not None)):
            if given:
                raise ValueError(f"{name} is for encoder-decoder models; this is a decoder-only model")
        return causal.generate(model, input_ids, config, attention_mask=attention_mask,
                               tokenizer=tokenizer, generator=generator, draft_model=draft_model, stats=stats)
    if arch == "seq2seq":
        if draft_model is not None:
            raise ValueError("draft_model is for decoder-only models; this is an encoder-decoder (Seq2Seq)")
        if config.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer (tokenizer=...) to read the generated text")
        source = input_features if input_features is not None else input_ids
        generator = config.generator(next(model.parameters()).device, generator)
        with causal.decoding(model):
            if config.num_beams == 1:
                return seq2seq.greedy(model, source, config, attention_mask=attention_mask, generator=generator,
                                      tokenizer=tokenizer, decoder_input_ids=decoder_input_ids)
            return seq2seq.beam_search(model, source, config, attention_mask=attention_mask,
                                       decoder_input_ids=decoder_input_ids)
    if arch == "encoder":
        raise ValueError("an encoder-only model (BERT-style) does not generate text: use model.fill_mask(...) "
                         "for masked tokens or model.features(...) for sentence vectors")
    raise ValueError(f"generate() needs a groundup CausalLM or Seq2Seq model, got {type(model).__name__}")


def continuations(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, *, eos: int,
                  batch: int = 50, stop_strings: list[str] | None = None, tokenizer: Any = None) -> list[list[int]]:
    """Greedy continuations of many prompts, ``batch`` at a time in left-padded batches: each one's new ids,
    up to its ``eos`` (excluded; a stopped row is padded with it)."""
    out = []
    for i in range(0, len(prompts), batch):
        rows = prompts[i: i + batch]
        ids = generate(model, rows, max_new_tokens, eos_token_id=eos, pad_token_id=eos, stop_strings=stop_strings,
                       tokenizer=tokenizer)
        # ids: [rows, longest prompt + new]; the prompts are left-padded, so every answer starts at one column
        out += [[t for t in row if t != eos] for row in ids[:, max(map(len, rows)):].tolist()]
    return out
