"""Perplexity of a decoder on text files with a strided sliding window, and how far a second model's
next-token distributions are from the first's (KL divergence and top-1 agreement) on the same windows.

The window (``window`` inputs) moves ``stride`` tokens at a time, as in the transformers perplexity guide;
each token is scored once, in the first window that reaches it, with the rest of that window before it as
context. stride = window gives disjoint windows (fast, less context per token), a small stride gives
nearly every token a full window of context. The text is conditioned on a prefix token (BOS, else EOS)
so that its first token is scored too. Reported: token perplexity, bits per byte (the summed negative
log-likelihood in bits over the UTF-8 bytes of the text: comparable across tokenizers) and word
perplexity (per whitespace-separated word).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .scoring import head_logprobs


@dataclass
class Perplexity:
    """Sums over a text (or several) and the figures they give."""

    nll: float  # summed negative log-likelihood, nats
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the text
    words: int  # whitespace-separated words
    kl: float | None = None  # summed KL(reference || model) over the scored tokens, nats
    top1: int | None = None  # scored tokens whose argmax agrees with the reference's

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / self.bytes / math.log(2)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    def __add__(self, other: Perplexity) -> Perplexity:
        both = self.kl is not None and other.kl is not None
        return Perplexity(self.nll + other.nll, self.tokens + other.tokens, self.bytes + other.bytes,
                          self.words + other.words, (self.kl + other.kl) if both else None,
                          (self.top1 + other.top1) if both else None)

    def summary(self) -> dict[str, float | int]:
        """The figures as a JSON-ready dict (KL and agreement as means per token when measured)."""
        out: dict[str, float | int] = {"token_perplexity": self.token_perplexity,
                                       "bits_per_byte": self.bits_per_byte, "word_perplexity": self.word_perplexity,
                                       **{k: v for k, v in asdict(self).items() if k in ("nll", "tokens", "bytes",
                                                                                          "words")}}
        if self.kl is not None:
            out["kl_divergence"] = self.kl / self.tokens
            out["top1_agreement"] = self.top1 / self.tokens
        return out


def word_count(text: str) -> int:
    """Words as lm-evaluation-harness counts them for word perplexity: pieces between runs of whitespace."""
    return len(re.split(r"\s+", text))


def strided_windows(n: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored place) of each window over places 0..n-1 of [prefix] + ids; place p > 0
    is predicted from the places before it in its window. Every place 1..n-1 is scored once.

    The windows are the transformers guide's: they start every ``stride`` places and score what no earlier
    window scored, so with stride < window each token sees at least window - stride places. Where the guide
    would leave a token unscored (stride = window: a window's first place has nothing before it), the
    window starts one place earlier instead."""
    if window < 2:
        raise ValueError(f"window={window} must be >= 2 (one token of context and one to score)")
    if not 1 <= stride <= window:
        raise ValueError(f"stride={stride} must be between 1 and the window ({window})")
    done = 1  # place 0 is the prefix token: never scored
    begin = 0
    while done < n:
        begin = min(begin, done - 1)  # the first scored place needs one place of context in the window
        end = min(begin + window, n)
        yield begin, end, done
        done = end
        begin += stride


def perplexity(model: torch.nn.Module, ids: Sequence[int], *, window: int | None = None, stride: int | None = None,
               prefix_id: int | None = None, reference: torch.nn.Module | None = None, batch_size: int = 8,
               text: str | None = None, progress: bool = True) -> Perplexity:
    """Strided perplexity of one token sequence (``prefix_id`` first when given). ``text`` (what the ids
    encode) gives the byte and word counts; with a ``reference`` model the KL(reference || model) and the
    top-1 agreement are summed over the same scored tokens."""
    cfg = model.config
    window = int(window or cfg.context_length)
    stride = int(stride or window)
    if window > cfg.context_length:
        raise ValueError(f"window={window} is past the model's context of {cfg.context_length} positions")
    seq = ([prefix_id] if prefix_id is not None else []) + list(ids)
    if len(seq) < 2:
        raise ValueError("nothing to score: the text has fewer than one token after the prefix")
    spans = list(strided_windows(len(seq), window, stride))
    device = next(model.parameters()).device
    nll, kl, top1, tokens = 0.0, 0.0, 0, 0
    bar = tqdm(total=len(seq) - 1, desc="perplexity", unit="tok", disable=not progress, leave=False)
    with torch.no_grad():
        for i in range(0, len(spans), batch_size):
            chunk = spans[i: i + batch_size]
            width = max(e - b for b, e, _ in chunk)
            rows = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, (b, e, _) in enumerate(chunk):
                rows[r, : e - b] = torch.tensor(seq[b:e])
                mask[r, : e - b] = 1
            rows, mask = rows.to(device), mask.to(device)
            h = model.hidden(rows, attention_mask=mask)[0]  # [B, T, C]
            h_ref = reference.hidden(rows, attention_mask=mask)[0] if reference is not None else None
            for r, (b, e, first) in enumerate(chunk):
                # place p (first..e-1) is predicted at row position p - b - 1
                sl = slice(first - b - 1, e - b - 1)
                tgt = rows[r, first - b: e - b]
                n, s, a = _score(model, h[r, sl], tgt, reference, None if h_ref is None else h_ref[r, sl])
                nll, kl, top1, tokens = nll + n, kl + s, top1 + a, tokens + len(tgt)
                bar.update(len(tgt))
    bar.close()
    text_bytes = len(text.encode("utf-8")) if text is not None else 0
    return Perplexity(nll, tokens, text_bytes, word_count(text) if text is not None else 0,
                      kl if reference is not None else None, top1 if reference is not None else None)


def _score(model, h: torch.Tensor, tgt: torch.Tensor, reference,
           h_ref: torch.Tensor | None) -> tuple[float, float, int]:
    """Summed NLL, summed KL(reference || model) and top-1 agreements of hidden states h [n, C] -> tgt [n]."""
    nll, kl, agree = 0.0, 0.0, 0
    for rows, logp in head_logprobs(model, h):  # logp [n, V]
        nll -= float(logp.gather(1, tgt[rows, None]).double().sum())
        if h_ref is not None:
            ref = reference.head(h_ref[rows]).float().log_softmax(-1)
            if ref.shape[-1] != logp.shape[-1]:
                raise ValueError(f"the reference's vocabulary has {ref.shape[-1]} entries, the model's "
                                 f"{logp.shape[-1]}: KL needs the same tokenizer")
            kl += float((ref.exp() * (ref - logp)).sum(-1).double().sum())
            agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
    return nll, kl, agree


def text_perplexity(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, window: int | None = None,
                    stride: int | None = None, reference: torch.nn.Module | None = None, batch_size: int = 8,
                    progress: bool = True) -> list[Perplexity]:
    """``perplexity`` of each text, tokenized without special tokens and conditioned on BOS (else EOS);
    sum the results (``sum(out[1:], out[0])``) for a corpus figure."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for text in texts:
        ids = tokenizer.encode(text, allowed_special="all", add_special_tokens=False)
        out.append(perplexity(model, ids, window=window, stride=stride, prefix_id=prefix, reference=reference,
                              batch_size=batch_size, text=text, progress=progress))
    return out
