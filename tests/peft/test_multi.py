"""Several LoRA adapters on one frozen model, one per batch row, in a single forward: equal to running each
row with its own adapter loaded alone."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, lora_folders

import groundup as gu
from groundup.peft import load_adapter
from groundup.peft.multi import LoraBank

ROWS = [[5, 9, 14, 3, 22, 7, 11, 30], [2, 4, 6, 8, 10, 12, 14, 16], [7, 7, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2]]


def _base() -> gu.CausalLM:
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=VOCAB, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48)
    return gu.CausalLM(cfg).eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three adapters of different ranks, scalings and target layers."""
    return lora_folders(_base, tmp_path_factory.mktemp("bank"), 3, scale=0.3)


def test_a_mixed_batch_equals_each_adapter_alone(adapters):
    bank = LoraBank(_base(), adapters)
    choice = [2, 0, -1, 1]
    with bank.rows(choice):
        got = bank.model(torch.tensor(ROWS))
    for b, (row, a) in enumerate(zip(ROWS, choice, strict=True)):
        alone = load_adapter(_base(), adapters[a]) if a >= 0 else _base()
        torch.testing.assert_close(got[b], alone(torch.tensor([row]))[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)
    with torch.no_grad():  # outside rows(): the base model
        torch.testing.assert_close(bank.model(torch.tensor(ROWS)), _base()(torch.tensor(ROWS)))


def test_generation_with_an_adapter_per_row(adapters):
    bank = LoraBank(_base(), adapters)
    prompts = [ROWS[0], ROWS[1][:5], ROWS[2][:3]]
    with bank.rows([1, 2, 0]):
        out = gu.generate(bank.model, prompts, 6)
    for b, (p, a) in enumerate(zip(prompts, [1, 2, 0], strict=True)):
        alone = gu.generate(load_adapter(_base(), adapters[a]), [p], 6)[0]
        assert torch.equal(out[b, out.shape[1] - len(alone):], alone)


def test_bad_indices(adapters):
    bank = LoraBank(_base(), adapters)
    with pytest.raises(ValueError, match="adapter indices must be"):
        with bank.rows([3]):
            pass
    with pytest.raises(ValueError, match="2 adapter indices for a batch of 4 rows"):
        with bank.rows([0, 1]):
            bank.model(torch.tensor(ROWS))
