"""Helpers of the serving tests."""

from __future__ import annotations

import torch

import groundup as gu

SEED, VOCAB = 7, 97


def base(seed: int = SEED):
    """The base model every adapter of the fixtures was made for (the same weights each call): the suite's
    tiny llama (tests/conftest.py's tiny_llama, which this conftest's own name hides)."""
    torch.manual_seed(seed)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=VOCAB, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48)
    return gu.CausalLM(cfg).eval()


class CharTokenizer:
    """Token id i <-> one letter (a + i % 26); enough for stop strings and streaming text."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 97 for c in text]
