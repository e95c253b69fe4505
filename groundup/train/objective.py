"""What the model is trained to predict, by architecture (the course's three pre-training objectives):

- causal_lm (GPT/Llama): the next token of every position (Radford et al., 2018).
- encoder (BERT): masked tokens, 15% chosen, 80/10/10 (Devlin et al., 2019).
- seq2seq (T5): corrupted spans, 15% noise in spans of mean 3, sentinels (Raffel et al., 2020).

Each takes a packed block batch (x, y) from the data mixture. The random choices of masking and span
corruption come from a generator per row seeded by (seed, micro-batch index, global row), so a resumed run
masks exactly as the uninterrupted one, data-parallel ranks mask their rows as one process would, and the
validation loss always uses the same masks.
"""

from __future__ import annotations

import torch

from ..data.objectives import mask_tokens, span_corruption, span_corruption_lengths
from ..nn.cross_entropy import cross_entropy


def _token(tokenizer, names: tuple[str, ...], what: str) -> int:
    for name in names:
        tid = tokenizer.token_to_id(name) if tokenizer is not None else None
        if tid is not None:
            return tid
    raise ValueError(f"the {what} objective needs a {names[0]} token in the tokenizer (looked for {names}); "
                     f"train the tokenizer with special_tokens including it")


class TrainObjective:
    """What the training loop asks of a loss: ``loss(model, batch, index, reduction, rows) -> (loss, count)``
    (the mean, or with reduction="sum" the sum, over ``count`` items), and ``metrics()``: figures gathered
    since the last call (logged with each step, and with "val_" after a validation). ``perplexity`` says
    whether exp(loss) means anything; ``shown`` names metrics for the progress bar; ``arch`` is the model
    architecture whose masked objectives need a global token count over processes (None: none)."""

    arch: str | None = None
    perplexity: bool = False
    shown: tuple[str, ...] = ()

    def loss(self, model: torch.nn.Module, batch, index: int, reduction: str = "mean",
             rows: list[int] | None = None) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        return {}


class Objective(TrainObjective):
    """loss(model, (x, y), index) for the model's architecture; built (and checked) before training."""

    perplexity = True

    def __init__(self, arch: str, tokenizer, block_size: int, vocab_size: int, seed: int = 0):
        self.arch, self.seed, self.vocab_size = arch, seed, vocab_size
        if arch == "encoder":
            self.mask_id = _token(tokenizer, ("[MASK]", "<mask>"), "masked-LM")
            self.special = [t.id for t in tokenizer.added if t.special]
        elif arch == "seq2seq":
            _, spans, _ = span_corruption_lengths(block_size)
            self.sentinels = [_token(tokenizer, (f"<extra_id_{i}>",), "span-corruption") for i in range(spans)]
            self.eos = tokenizer.eos_token_id

    def _rows(self, x: torch.Tensor, index: int, rows: list[int] | None, corrupt) -> tuple[torch.Tensor, ...]:
        """Apply `corrupt(row [1, T], generator)` to each row with its own seeded generator."""
        rows = rows if rows is not None else list(range(x.shape[0]))
        outs = [corrupt(x[i : i + 1].cpu(), torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 65_537
                                                                           + r))
                for i, r in enumerate(rows)]
        return tuple(torch.cat(parts).to(x.device) for parts in zip(*outs, strict=True))

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], index: int,
             reduction: str = "mean", rows: list[int] | None = None) -> tuple[torch.Tensor, int]:
        """(loss, number of predicted tokens) on one micro-batch (x, y). `index` numbers the global
        micro-batch and `rows` gives each row's place in it (default 0..B-1); together they seed the random
        choices."""
        x, y = batch
        aux = 0  # the MoE router losses (causal LM, seq2seq), added to a mean loss only
        if self.arch == "causal_lm":  # the fused lm_head + loss: no B x T x V logits
            loss, aux = model(x, targets=y, reduction=reduction, return_aux_loss=True)
            labels = y  # -100: no target
        elif self.arch == "encoder":
            inputs, labels = self._rows(x, index, rows, lambda r, g: mask_tokens(
                r, mask_token_id=self.mask_id, vocab_size=self.vocab_size, special_ids=self.special, generator=g))
            loss = cross_entropy(model(inputs), labels, reduction)
        else:
            inputs, labels = self._rows(x, index, rows, lambda r, g: span_corruption(
                r, sentinel_ids=self.sentinels, eos_id=self.eos, generator=g))
            core = getattr(model, "module", model)  # DDP wraps the model
            logits, aux = model(inputs, decoder_input_ids=core.shift_right(labels), return_aux_loss=True)
            loss = cross_entropy(logits, labels, reduction)
        return loss + (aux if reduction == "mean" else 0), int((labels != -100).sum())
