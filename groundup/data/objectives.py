"""BERT's pre-training objectives (Devlin et al., 2019, section 3.1 and appendix A.1).

Masked language modelling: choose 15% of the (non-special) tokens; of those, replace 80% with [MASK],
10% with a random token and leave 10% unchanged, and predict the original token only at the chosen
positions (label -100, which cross-entropy ignores, everywhere else). Keeping some chosen tokens
unchanged or random stops the model from learning that only [MASK] positions matter.

Next sentence prediction: pair sentence A with the sentence that follows it (IsNext, label 0) half of the
time and with a sentence from another document (NotNext, label 1) otherwise, packed as
``[CLS] A [SEP] B [SEP]`` with segment ids 0 for the first part and 1 for the second.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import torch

IGNORE = -100
IS_NEXT, NOT_NEXT = 0, 1


def mask_tokens(input_ids: torch.Tensor, *, mask_token_id: int, vocab_size: int,
                special_ids: Sequence[int] = (), attention_mask: torch.Tensor | None = None,
                mlm_probability: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, labels) for MLM from token ids [B, T]; the input tensor is not modified.

    Tokens in ``special_ids`` ([CLS], [SEP], [PAD] ...) and padding (attention_mask == 0) are never chosen.
    Of the chosen tokens, ``mask_fraction`` become [MASK], ``random_fraction`` a uniformly random token of
    the vocabulary, and the rest stay as they are.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability={mlm_probability} must be in (0, 1)")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1.0:
        raise ValueError(f"mask_fraction={mask_fraction} and random_fraction={random_fraction} must be >= 0 "
                         "and sum to at most 1")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id={mask_token_id} is outside the vocabulary [0, {vocab_size})")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {vocab_size})")
    dev = input_ids.device
    eligible = torch.ones_like(input_ids, dtype=torch.bool)
    if special_ids:
        eligible &= ~torch.isin(input_ids, torch.tensor(list(special_ids), device=dev))
    if attention_mask is not None:
        eligible &= attention_mask.bool()

    def draw() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=dev)

    chosen = (draw() < mlm_probability) & eligible
    labels = torch.where(chosen, input_ids, IGNORE)
    action = draw()  # one uniform per token splits the chosen ones into mask / random / keep
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    inputs = input_ids.masked_fill(to_mask, mask_token_id)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=dev)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def bert_pair(a: Sequence[int], b: Sequence[int] | None, *, cls_id: int, sep_id: int,
              max_len: int | None = None) -> tuple[list[int], list[int]]:
    """``[CLS] a [SEP] (b [SEP])`` ids and their segment ids (0 up to the first [SEP], 1 after).

    With ``max_len``, tokens are dropped from the end of the longer sentence until the pair fits (the
    BERT recipe, which keeps both sentences as balanced as possible).
    """
    a, b = list(a), list(b) if b is not None else None
    if max_len is not None:
        budget = max_len - (3 if b is not None else 2)
        if budget < (2 if b is not None else 1):
            raise ValueError(f"max_len={max_len} leaves no room for the sentences after [CLS]/[SEP]")
        while len(a) + len(b or []) > budget:
            longer = a if b is None or len(a) >= len(b) else b
            longer.pop()
    ids = [cls_id, *a, sep_id]
    types = [0] * len(ids)
    if b is not None:
        ids += [*b, sep_id]
        types += [1] * (len(b) + 1)
    return ids, types


def nsp_pairs(documents: Sequence[Sequence[Sequence[int]]], *, cls_id: int, sep_id: int, max_len: int = 128,
              seed: int = 0) -> list[dict[str, list[int] | int]]:
    """Next-sentence-prediction examples from documents (lists of tokenised sentences).

    Every sentence that has a successor becomes sentence A once; B is that successor (label IS_NEXT = 0)
    with probability 1/2, otherwise a random sentence of a different document (label NOT_NEXT = 1).
    Returns dicts with ``input_ids``, ``token_type_ids`` and ``label``.
    """
    docs = [d for d in documents if len(d) > 0]
    if len(docs) < 2:
        raise ValueError("nsp_pairs needs at least two non-empty documents (NotNext sentences come from another "
                         "document)")
    rng = random.Random(seed)
    out: list[dict[str, list[int] | int]] = []
    for d, doc in enumerate(docs):
        for i in range(len(doc) - 1):
            if rng.random() < 0.5:
                b, label = doc[i + 1], IS_NEXT
            else:
                other = rng.randrange(len(docs) - 1)
                other += other >= d  # any document but this one
                b, label = rng.choice(docs[other]), NOT_NEXT
            ids, types = bert_pair(doc[i], b, cls_id=cls_id, sep_id=sep_id, max_len=max_len)
            out.append({"input_ids": ids, "token_type_ids": types, "label": label})
    return out


def _segments(total: int, parts: int, generator: torch.Generator | None) -> list[int]:
    """`total` items cut at random into `parts` non-empty runs (their lengths)."""
    cuts = (torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).sort().values.tolist()
    edges = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(edges)]


def span_corruption_lengths(length: int, noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int, int]:
    """(noise tokens, noise spans, ...) for a sequence of `length`: the same for every row, so corrupted
    batches stack. Returns (n_noise, n_spans, input length incl. EOS) ; targets are n_noise + n_spans + 1."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(min(round(n_noise / mean_span), n_noise, length - n_noise), 1)
    return n_noise, n_spans, length - n_noise + n_spans + 1


def span_corruption(input_ids: torch.Tensor, *, sentinel_ids: Sequence[int], eos_id: int,
                    noise_density: float = 0.15, mean_span: float = 3.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's pre-training objective (Raffel et al., 2020, section 3.1.4): (inputs, labels) from ids [B, T].

    About `noise_density` of each row's tokens, in spans of mean length `mean_span`, are dropped from the
    input and each span is replaced by one sentinel (<extra_id_0>, <extra_id_1>, ... = sentinel_ids in
    order); the labels list each sentinel followed by the tokens it hides, and EOS. Spans alternate with
    kept runs, the row starting with a kept run, as in T5's random_spans_noise_mask.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"span_corruption needs ids [B, T] with T >= 2, got {tuple(input_ids.shape)}")
    if not 0.0 < noise_density < 1.0 or mean_span < 1:
        raise ValueError(f"noise_density={noise_density} must be in (0, 1) and mean_span={mean_span} >= 1")
    length = input_ids.shape[1]
    n_noise, n_spans, _ = span_corruption_lengths(length, noise_density, mean_span)
    if len(sentinel_ids) < n_spans:
        raise ValueError(f"{n_spans} noise spans per row need {n_spans} sentinel ids, got {len(sentinel_ids)}")
    inputs, labels = [], []
    for row in input_ids.tolist():
        noise = _segments(n_noise, n_spans, generator)
        keep = _segments(length - n_noise, n_spans, generator)
        src, tgt, pos = [], [], 0
        for k, (kept, hidden) in enumerate(zip(keep, noise, strict=False)):
            src += row[pos : pos + kept]
            pos += kept
            src.append(sentinel_ids[k])
            tgt += [sentinel_ids[k], *row[pos : pos + hidden]]
            pos += hidden
        inputs.append([*src, eos_id])
        labels.append([*tgt, eos_id])
    return torch.tensor(inputs, dtype=input_ids.dtype), torch.tensor(labels, dtype=input_ids.dtype)
