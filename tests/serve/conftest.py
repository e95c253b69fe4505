"""Shared pieces of the serving tests: peft adapter folders for the tiny model, and an HF folder (tiny
Llama + a trained tokenizer) with its own adapters, for the HTTP server."""

from __future__ import annotations

import pytest
import torch
from serve_util import base, make_adapters


@pytest.fixture(scope="session")
def adapter_folders(tmp_path_factory) -> dict[str, str]:
    """Four LoRA adapters (different ranks and layers) and two soft prompts (3 and 5 virtual tokens)."""
    return make_adapters(base, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def lm_folder(tmp_path_factory):
    import transformers as T

    import groundup as gu

    texts = ["the quick brown fox jumps over the lazy dog", "def add(a, b): return a + b",
             "one two three four five six seven eight nine ten", "hello world, hello server"] * 4
    tok = gu.Tokenizer.train(texts, 300, bos_token="<s>", eos_token="</s>")
    cfg = T.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("lm") / "tiny-lm"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lm_adapters(lm_folder, tmp_path_factory) -> dict[str, str]:
    import groundup as gu

    return make_adapters(lambda: gu.from_pretrained(lm_folder).eval(), tmp_path_factory.mktemp("lm_adapters"))
