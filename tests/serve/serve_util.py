"""Helpers of the serving tests."""

from __future__ import annotations

import pytest
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

    def encode(self, text: str, **_) -> list[int]:
        return [ord(c) - 97 for c in text]


def make_adapters(factory, root) -> dict[str, str]:
    """Four LoRA folders (different ranks and layers) and two soft prompts (3 and 5 virtual tokens) for the
    model ``factory()`` builds, with large random weights so that each changes the output."""
    from conftest import lora_folders

    from groundup.peft import apply_prompt_tuning, save_adapter

    out = {f"lora{i}": str(f) for i, f in enumerate(lora_folders(factory, root, 4, scale=0.5))}
    for i, n in enumerate((3, 5)):
        model = apply_prompt_tuning(factory(), n)
        with torch.no_grad():
            model.embed.prompt_embeddings.normal_(0, 1.0, generator=torch.Generator().manual_seed(20 + i))
        out[f"soft{i}"] = str(save_adapter(model, root / f"soft{i}"))
    return out


# -- fixtures (imported by the test modules: a conftest.py here would hide tests/conftest.py's helpers) --

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
