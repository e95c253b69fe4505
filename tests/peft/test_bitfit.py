"""BitFit: only biases train; a model without biases is refused with the reason."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB

import groundup as gu
from groundup.peft import apply_bitfit


def test_only_biases_train_and_the_rest_stays():
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config.preset("gpt2").replace(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                                                         max_seq_len=32))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not n.endswith(".bias")}
    apply_bitfit(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") for n in trainable)
    assert len(trainable) == sum(1 for n, _ in model.named_parameters() if n.endswith(".bias"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, VOCAB, (2, 12))
    before = model(ids[:, :-1], targets=ids[:, 1:])
    for _ in range(5):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(ids[:, :-1], targets=ids[:, 1:]) < before
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_a_model_without_biases_is_refused():
    model = gu.CausalLM(gu.Config.preset("tiny-llama"))
    with pytest.raises(ValueError, match="BitFit trains biases, and the llama model has none"):
        apply_bitfit(model)
