"""The small records of Config: what an encoder puts on its output (BERT's segments and task heads, ViT's pooler
and classifier), an audio encoder's input (Whisper), the score biases of ALiBi and T5, and how a model is run
and initialised."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .checks import Record, check_literals

Kernel = Literal["eager", "sdpa", "flash"]


@dataclass
class HeadsConfig(Record):
    """Segment embeddings and task heads of an encoder (BERT, Devlin et al., 2019; ViT's pooler and classifier)."""

    type_vocab_size: int = 0  # token type (segment) embeddings; 0 = none
    pooler: bool = False  # dense + tanh on the first ([CLS]) token
    mlm_head: bool = False  # masked-LM head: dense + act + norm, then the (tied) vocabulary projection
    nsp_head: bool = False  # next-sentence prediction on the pooled output: 2 classes
    num_labels: int = 0  # sequence classification on the pooled output; 0 = no classifier

    def __post_init__(self) -> None:
        for name in ("type_vocab_size", "num_labels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")

    def any(self) -> dict[str, Any]:
        """The fields that are set (not off)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclass
class AudioConfig(Record):
    """seq2seq over audio (Whisper, Radford et al., 2022): the encoder reads n_mels log-mel bins through two conv1d
    (kernel 3, the second with stride 2) with GELU, halving 3000 frames to 1500 positions."""

    n_mels: int = 80
    encoder_max_seq_len: int | None = None  # the encoder's position table when not max_seq_len (Whisper: 1500)

    def __post_init__(self) -> None:
        if isinstance(self.n_mels, bool) or not isinstance(self.n_mels, int) or self.n_mels <= 0:
            raise ValueError(f"n_mels={self.n_mels!r} must be a positive integer (0 means token ids, no audio)")
        if self.encoder_max_seq_len is not None and self.encoder_max_seq_len <= 0:
            raise ValueError(f"encoder_max_seq_len={self.encoder_max_seq_len} must be positive")


@dataclass
class ScoreBiasConfig(Record):
    """The biases added to attention scores by position: ALiBi's slopes (Press et al., 2022) and T5's relative
    position buckets (Raffel et al., 2020)."""

    alibi_max_bias: float = 8.0  # ALiBi slopes are 2^(-max_bias * h / n_heads)
    rel_buckets: int = 32  # T5 relative position buckets (pos='relative')
    rel_max_distance: int = 128  # distances beyond this share the last bucket

    def check_relative(self) -> None:
        if self.rel_buckets < 2 or self.rel_max_distance < self.rel_buckets // 2:
            raise ValueError(f"rel_buckets={self.rel_buckets} must be >= 2 and rel_max_distance="
                             f"{self.rel_max_distance} at least rel_buckets // 2")


@dataclass
class ImplConfig(Record):
    """How the model runs and starts: the attention kernel, the flash kernel's tile, the initialisation's spread."""

    attn_kernel: Kernel = "sdpa"
    flash_block_size: int = 64
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_literals(self)
        if isinstance(self.flash_block_size, bool) or not isinstance(self.flash_block_size, int) \
                or self.flash_block_size <= 0:
            raise ValueError(f"flash_block_size={self.flash_block_size!r} must be a positive integer")
