"""Shared fixtures of the alignment tests: a tiny random Llama pair (policy and a perturbed reference) saved as
transformers folders with a groundup tokenizer, and fixed preference ids."""

from __future__ import annotations

import pytest
import torch

TEXTS = ["the quick brown fox jumps over the lazy dog", "one two three four five six seven eight nine ten",
         "good answer bad answer right wrong yes no", "what is two plus two? four. five."] * 4


def llama(vocab: int, seed: int, **extra):
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **extra)
    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def align_folders(tmp_path_factory):
    """{"tok": groundup Tokenizer, "policy": folder, "ref": folder}: two random Llamas that differ."""
    import groundup as gu

    tok = gu.Tokenizer.train(TEXTS, 300, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    root = tmp_path_factory.mktemp("align")
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = {"tok": tok}
    for name, seed in (("policy", 0), ("ref", 1)):
        folder = root / name
        llama(tok.vocab_size, seed, **ids).save_pretrained(folder)
        tok.save_pretrained(folder)
        out[name] = folder
    return out


def hf_tokenizer(folder):
    import transformers as T

    tok = T.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                    pad_token="<pad>")
    return tok


def fixed_pairs(vocab: int, n: int = 4, seed: int = 0) -> list[dict]:
    """n records of prompt/chosen/rejected ids of different lengths (the last answer token is not special)."""
    g = torch.Generator().manual_seed(seed)

    def ids(k: int) -> list[int]:
        return torch.randint(5, vocab, (k,), generator=g).tolist()

    return [{"prompt_ids": ids(3 + i), "chosen_ids": ids(2 + (i * 3) % 5), "rejected_ids": ids(4 - i % 3)}
            for i in range(n)]
