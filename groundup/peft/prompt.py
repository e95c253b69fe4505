"""Prompt tuning: n trainable "virtual token" embeddings put in front of every input, the model frozen
(Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

Here the virtual tokens are token ids past the vocabulary: ids vocab_size .. vocab_size + n - 1 read
their embeddings from the trainable table instead of the model's. A prompt-tuned input is then simply
``prompt_ids() + ids``, which the model, its KV cache, padding and ``generate`` handle like any other
tokens, with the virtual tokens at positions 0..n-1 as in the peft library. Several tasks each get their own
n ids, so one batch can mix rows of different tasks, each with its own soft prompt, in a single forward
pass (multi-task serving on one frozen model).

Initialisation is random (as in peft, normal with the embeddings' spread) or from the embeddings of a
text's tokens, repeated to n (Lester et al.'s class-label / vocabulary initialisation); ``interpret``
lists each virtual token's nearest vocabulary tokens by cosine similarity, as the course shows.
"""

from __future__ import annotations

import torch
from torch import nn


class SoftPromptEmbedding(nn.Module):
    """The model's embedding table for ids < vocab_size, the trainable ``prompt_embeddings`` [tasks x n, C]
    for the ids after it."""

    def __init__(self, base: nn.Embedding, num_virtual_tokens: int, tasks: int = 1) -> None:
        super().__init__()
        if num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens={num_virtual_tokens} must be >= 1")
        if tasks < 1:
            raise ValueError(f"tasks={tasks} must be >= 1")
        self.base, self.n, self.tasks = base, num_virtual_tokens, tasks
        self.vocab = base.weight.shape[0]
        w = base.weight
        init = torch.randn(tasks * num_virtual_tokens, w.shape[1], device=w.device) * float(w.detach().float().std())
        self.prompt_embeddings = nn.Parameter(init.to(w.dtype))  # [tasks x n, C]

    @property
    def weight(self) -> torch.Tensor:
        """The vocabulary's table (what a tied head reads)."""
        return self.base.weight

    @property
    def num_virtual(self) -> int:
        return self.tasks * self.n

    def prompt_ids(self, task: int = 0) -> list[int]:
        """The virtual token ids of one task, to put before a prompt's ids."""
        if not 0 <= task < self.tasks:
            raise ValueError(f"task={task} is out of range: the soft prompt has {self.tasks} task(s)")
        start = self.vocab + task * self.n
        return list(range(start, start + self.n))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        virtual = ids >= self.vocab
        x = self.base(ids.clamp(max=self.vocab - 1))  # [B, T, C]
        if bool(virtual.any()):
            soft = self.prompt_embeddings[(ids - self.vocab).clamp(min=0)]  # [B, T, C]
            x = torch.where(virtual[..., None], soft.to(x.dtype), x)
        return x

    @torch.no_grad()
    def init_from_ids(self, token_ids: list[int], task: int | None = None) -> None:
        """Set the virtual tokens (of one task, or all) to the embeddings of ``token_ids``, cycled to n."""
        if not token_ids:
            raise ValueError("the initialisation text encodes to no tokens")
        rows = self.base.weight[torch.tensor([token_ids[i % len(token_ids)] for i in range(self.n)])]
        for t in range(self.tasks) if task is None else [task]:
            self.prompt_embeddings[t * self.n: (t + 1) * self.n] = rows.to(self.prompt_embeddings.dtype)

    @torch.no_grad()
    def interpret(self, k: int = 5) -> list[list[tuple[int, float]]]:
        """For each virtual token, the k vocabulary ids nearest by cosine similarity, with the similarity."""
        soft = nn.functional.normalize(self.prompt_embeddings.float(), dim=-1)  # [N, C]
        vocab = nn.functional.normalize(self.base.weight.float(), dim=-1)  # [V, C]
        sims = soft @ vocab.T  # [N, V]
        top = sims.topk(k, dim=-1)
        return [list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(top.indices, top.values, strict=True)]


def apply_prompt_tuning(model: nn.Module, num_virtual_tokens: int = 20, *, tasks: int = 1,
                        init_ids: list[int] | None = None) -> nn.Module:
    """Freeze ``model`` and give it a soft prompt (in place): ``model.embed`` becomes a SoftPromptEmbedding,
    whose ``prompt_embeddings`` are the only trainable parameters. ``init_ids``: token ids of an
    initialisation text (default: random)."""
    if isinstance(model.embed, SoftPromptEmbedding):
        raise ValueError("the model already has a soft prompt")
    soft = SoftPromptEmbedding(model.embed, num_virtual_tokens, tasks)
    if init_ids is not None:
        soft.init_from_ids(init_ids)
    for p in model.parameters():
        p.requires_grad_(False)
    model.embed = soft
    return model


def soft_prompt(model: nn.Module) -> SoftPromptEmbedding | None:
    """The model's soft prompt, or None."""
    embed = getattr(model, "embed", None)
    return embed if isinstance(embed, SoftPromptEmbedding) else None
