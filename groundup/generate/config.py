"""GenerationConfig: every setting of one generation, in one validated record.

The field names are transformers' own (``max_new_tokens``, ``top_p``, ``num_beams``, ``suppress_tokens`` ...) where
transformers has the setting; groundup's additions are ``truncate``, ``rope_scaling``, ``compile`` and the
draft-model settings ``num_draft_tokens`` / ``draft_confidence`` (transformers' assistant model). ``check(arch)``
refuses, naming the field, a value out of range or a setting the architecture's decoder does not offer, once
per call and before any work; the decoder-only, encoder-decoder, compiled and speculative paths then read the
record as it is. What is not a setting but an input of the call (prompts, masks, the tokenizer, a generator, the
draft model) stays an argument of ``generate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .sampling import check_sampling
from .stopping import as_ids


class _ModelDefault:
    def __repr__(self) -> str:
        return "MODEL_DEFAULT"


MODEL_DEFAULT: Any = _ModelDefault()  # "the model's own setting": eos_token_id's default


def end_ids(model_config: Any, tokenizer: Any = None) -> list[int]:
    """The ids that end a text: the model config's eos ids (one or a list), then the tokenizer's eos token when it
    is another one (a chat model's config may name only its end-of-turn token, or only the base's eos)."""
    ids = list(model_config.eos_ids)
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None and tok_eos not in ids:
        ids.append(tok_eos)
    return ids


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate (see ``groundup.generate`` for what each setting does)."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0  # the stop ids cannot be chosen before this many new tokens
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1  # > 1: beam search (encoder-decoders)
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    # MODEL_DEFAULT: the config's eos ids for an encoder-decoder, none for a decoder-only model (whose callers
    # pass the tokenizer's); None or [] never stop early
    eos_token_id: int | Sequence[int] | None = MODEL_DEFAULT
    pad_token_id: int | None = None  # what fills a row after it stopped (default: the first stop id)
    stop_strings: Sequence[str] = ()
    seed: int | None = None
    truncate: bool = False  # a prompt past the context keeps its last tokens instead of being refused
    rope_scaling: tuple[str, float] | None = None  # ("linear" | "ntk", factor) for this call only
    num_draft_tokens: int = 4  # speculative decoding: tokens the draft model guesses per round
    draft_confidence: float = 0.0  # ... fewer when it gives its guess a probability below this
    compile: bool | str = False  # the one-token steps through torch.compile (True = inductor, or a backend)
    suppress_tokens: Sequence[int] = ()  # never generated (encoder-decoders: Whisper)
    begin_suppress_tokens: Sequence[int] = ()  # not as the first new token

    def __post_init__(self) -> None:
        for name in ("stop_strings", "suppress_tokens", "begin_suppress_tokens"):  # None or a list -> a tuple
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))

    @classmethod
    def of(cls, config: GenerationConfig | None = None, max_new_tokens: int | None = None,
           **settings: Any) -> GenerationConfig:
        """``config`` (or the defaults) with ``max_new_tokens`` (when given) and ``settings`` replaced; an unknown
        name is refused with the list."""
        if max_new_tokens is not None:
            settings["max_new_tokens"] = max_new_tokens
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; the settings are "
                            f"GenerationConfig's fields: {', '.join(sorted(names))}")
        return dataclasses.replace(config or cls(), **settings)

    def stop_ids(self, model_config: Any) -> list[int]:
        """The ids a generation stops at: MODEL_DEFAULT -> the config's eos ids for an encoder-decoder, none for
        a decoder-only model; otherwise ``eos_token_id`` as a list (None/[] -> none)."""
        if self.eos_token_id is MODEL_DEFAULT:
            return list(model_config.eos_ids) if model_config.arch == "seq2seq" else []
        return as_ids(self.eos_token_id)

    def check(self, arch: str) -> GenerationConfig:
        """Raise ValueError naming the first setting that is out of range or that ``arch`` does not offer;
        returns self."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens={self.min_new_tokens} must be in [0, max_new_tokens="
                             f"{self.max_new_tokens}]")
        check_sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                       repetition_penalty=self.repetition_penalty)
        if self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams} must be >= 1")
        if arch == "causal_lm":
            for name in ("suppress_tokens", "begin_suppress_tokens"):
                if getattr(self, name):
                    raise ValueError(f"{name} is for encoder-decoder models; this is a decoder-only model")
            if self.num_beams != 1:
                raise ValueError(f"num_beams={self.num_beams}: beam search is offered for encoder-decoder models; "
                                 "decoder-only models decode greedily or by sampling (num_beams=1)")
        elif arch == "seq2seq":
            for name, given in (("rope_scaling", self.rope_scaling is not None), ("truncate", self.truncate),
                                ("compile", bool(self.compile))):
                if given:
                    raise ValueError(f"{name} is for decoder-only models; this is an encoder-decoder (Seq2Seq)")
            if self.num_beams > 1 and (self.temperature or self.stop_strings or self.repetition_penalty != 1.0):
                raise ValueError("beam search (num_beams > 1) is deterministic here: it takes no temperature, "
                                 "repetition_penalty or stop_strings; use num_beams=1 to sample")
        return self

    def generator(self, device: torch.device, generator: torch.Generator | None = None) -> torch.Generator | None:
        """The random source of sampling: the given generator, else one seeded with ``seed``, else the global."""
        if generator is None and self.seed is not None:
            return torch.Generator(device=device).manual_seed(self.seed)
        return generator
