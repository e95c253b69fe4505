"""Decode steps and training steps inside trusted_inputs read no tensor value (no .item(), bool() or int()
of a tensor: each is a host sync on a GPU and a graph break for torch.compile); outside it the clear
errors stay. The first call of each shape is measured by nn/autotune.py, which compares the candidates'
results (a read, once per shape and process); the steps checked here come after one such warm-up."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.models.common import trusted_inputs


def _forbid_reads(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("a tensor value was read on the hot path")

    for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)


# MoE layers still gather each expert's tokens with nonzero() (a data-dependent shape): the MoE issue's
# grouped dispatch removes that; dense models read nothing
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-mistral"])
def test_a_decode_step_reads_no_tensor_value(preset, monkeypatch):
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config.preset(preset)).eval()
    ids = torch.randint(1, 200, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    cache = model.new_cache(16)
    full = torch.cat([mask, mask.new_ones(2, 1)], 1)
    with torch.no_grad():
        warm = model.new_cache(16)  # the same two shapes once, on another cache: the autotuner measures them
        model(ids, attention_mask=mask, cache=warm)
        model(ids[:, -1:], attention_mask=full, cache=warm)
        model(ids, attention_mask=mask, cache=cache)
        _forbid_reads(monkeypatch)
        with trusted_inputs():
            out = model(ids[:, -1:], attention_mask=full, cache=cache)
    assert out.shape == (2, 1, 256)


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-transformer"])
def test_an_encoder_decoder_step_reads_no_tensor_value(preset, monkeypatch):
    torch.manual_seed(0)
    cfg = gu.Config.preset(preset)  # T5's relative bias; the original Transformer's sinusoidal positions
    model = gu.Seq2Seq(cfg).eval()
    src = torch.randint(1, 200, (2, 7))
    mask = torch.ones_like(src)
    mask[0, -2:] = 0
    with torch.no_grad():
        memory = model.encode(src, attention_mask=mask)
        cache = model.new_cache()
        model.decode(torch.zeros(2, 1, dtype=torch.long), memory, memory_mask=mask, cache=cache)
        _forbid_reads(monkeypatch)
        with trusted_inputs():
            out = model.decode(torch.ones(2, 1, dtype=torch.long), memory, memory_mask=mask, cache=cache)
    assert out.shape == (2, 1, cfg.vocab_size)


def test_a_training_step_reads_no_tensor_value_and_errors_stay_outside(monkeypatch):
    model = gu.CausalLM(gu.Config.preset("tiny-llama"))
    ids = torch.randint(0, 256, (2, 9))
    with pytest.raises(ValueError, match="token id 300"):
        model(torch.tensor([[1, 300]]))  # outside: the clear error
    model(ids[:, :-1], targets=ids[:, 1:]).backward()  # the autotuner's one measurement of these shapes
    model.zero_grad()
    _forbid_reads(monkeypatch)
    with trusted_inputs():
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
    assert model.embed.weight.grad is not None
