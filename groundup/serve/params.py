"""What one request asks of the engine: its sampling settings, checked before any work starts.

The settings are those of the OpenAI completions API (and vLLM's additions); ``generation_config`` maps them
onto the library's GenerationConfig, which the engine decodes each sequence by through the library's own
sampling code (generate/sampling.py), so a request decodes exactly as ``gu.generate`` would with the same
settings. Every check names the field it rejects, which the HTTP layer turns into a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generate.config import GenerationConfig


class ParamError(ValueError):
    """A request setting out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class SamplingParams:
    """One request's decoding settings (n samples of at most ``max_tokens`` tokens each).

    ``logprobs`` (0..20) returns each chosen token's log-probability and that many alternatives;
    ``prompt_logprobs`` the same for the prompt's tokens (the first has none), which ``echo`` needs.
    Log-probabilities are of the model's raw distribution, before temperature and filters.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    n: int = 1

    def check(self, vocab_size: int, *, max_n: int = 16, max_stops: int = 8) -> SamplingParams:
        """Raise ParamError for the first setting out of range; returns self."""
        def want(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ParamError(name, message)

        def is_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        want(is_int(self.max_tokens) and self.max_tokens >= 0, "max_tokens",
             f"{self.max_tokens!r} must be an integer >= 0")
        want(isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100, "temperature",
             f"{self.temperature!r} must be a number in [0, 100] (0 = greedy)")
        want(self.top_p is None or (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1), "top_p",
             f"{self.top_p!r} must be in (0, 1]")
        want(self.top_k is None or (is_int(self.top_k) and self.top_k >= 1) or self.top_k == -1, "top_k",
             f"{self.top_k!r} must be an integer >= 1 (or -1 for none)")
        want(isinstance(self.repetition_penalty, (int, float)) and 0 < self.repetition_penalty <= 10,
             "repetition_penalty", f"{self.repetition_penalty!r} must be in (0, 10] (1 = none)")
        want(isinstance(self.stop, list) and len(self.stop) <= max_stops
             and all(isinstance(s, str) and s for s in self.stop), "stop",
             f"must be at most {max_stops} non-empty strings")
        want(isinstance(self.stop_token_ids, list) and all(is_int(t) and 0 <= t < vocab_size
                                                            for t in self.stop_token_ids),
             "stop_token_ids", f"must be token ids in [0, {vocab_size})")
        want(is_int(self.min_tokens) and 0 <= self.min_tokens <= max(self.max_tokens, 0), "min_tokens",
             f"{self.min_tokens!r} must be in [0, max_tokens]")
        want(self.seed is None or is_int(self.seed), "seed", f"{self.seed!r} must be an integer")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            want(v is None or (is_int(v) and 0 <= v <= 20), name, f"{v!r} must be an integer in [0, 20]")
        want(is_int(self.n) and 1 <= self.n <= max_n, "n", f"{self.n!r} must be an integer in [1, {max_n}]")
        if self.top_k == -1:
            self.top_k = None
        if self.top_p == 1:
            self.top_p = None
        return self

    def generation_config(self, eos: list[int]) -> GenerationConfig:
        """These settings in the library's terms (the model's ``eos`` ids dropped with ``ignore_eos``, the
        request's stop_token_ids added): what the engine decodes each of the n sequences by."""
        stops = sorted(set([] if self.ignore_eos else eos) | set(self.stop_token_ids))
        return GenerationConfig(max_new_tokens=self.max_tokens, min_new_tokens=self.min_tokens,
                                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                repetition_penalty=self.repetition_penalty, eos_token_id=stops,
                                stop_strings=self.stop, seed=self.seed)
