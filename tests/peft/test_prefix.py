"""Prefix tuning: trainable keys/values before every layer, through the KV cache; generation equals the
uncached reference per row; peft's prefix tuning gives the same logits in both directions."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama as _tiny

import groundup as gu
from groundup.generate import generate_uncached
from groundup.peft import AdapterError, apply_prefix_tuning, load_adapter, prefix_of, save_adapter

IDS = [5, 9, 14, 3, 22, 7, 11, 30]




@pytest.mark.parametrize("projection", [False, True])
def test_only_the_prefix_trains_and_changes_the_output(projection):
    model = _tiny()
    base = model(torch.tensor([IDS]))
    apply_prefix_tuning(model, 3, projection=projection)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prefix_tuning.") for n in trainable)
    out = model(torch.tensor([IDS]))
    assert out.shape == base.shape and not torch.allclose(out, base, atol=1e-4)
    model(torch.tensor([IDS[:-1]]), targets=torch.tensor([IDS[1:]])).backward()
    assert prefix_of(model).embedding.weight.grad.abs().sum() > 0


def test_generation_per_row_equals_the_uncached_reference():
    model = apply_prefix_tuning(_tiny(), 3)
    with torch.no_grad():
        prefix_of(model).embedding.weight.normal_(0, 1.0)
    prompts = [IDS, IDS[:3], IDS[2:7]]
    out = gu.generate(model, prompts, 6)
    for b, p in enumerate(prompts):
        assert torch.equal(out[b, 8 - len(p):], generate_uncached(model, torch.tensor([p]), 6)[0]), b
    spec = gu.generate(model, prompts, 6, draft_model=_tiny(n_layers=1), num_draft_tokens=3)
    assert torch.equal(spec, out)  # speculative decoding keeps the prefix in its own caches


def test_peft_parity_both_ways(hf_folder, tmp_path):
    import peft

    path, ref = hf_folder("llama")
    ids = torch.tensor([IDS])
    ours = apply_prefix_tuning(gu.from_pretrained(path), 4)
    with torch.no_grad():
        prefix_of(ours).embedding.weight.normal_(0, 0.5)
    save_adapter(ours, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(ref, tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids).logits, ours(ids), atol=1e-4, rtol=1e-4)

    pm = peft.get_peft_model(ref, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    pm.save_pretrained(tmp_path / "theirs")
    pm.eval()
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    mine = load_adapter(gu.from_pretrained(path), tmp_path / "theirs")
    torch.testing.assert_close(mine(ids), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(AdapterError, match="different base model"):
        load_adapter(gu.CausalLM(mine.config.replace(n_layers=3)), tmp_path / "theirs")


def test_reparameterised_prefix_saves_its_output(tmp_path):
    model = apply_prefix_tuning(_tiny(), 2, projection=True, hidden=16)
    want = model(torch.tensor([IDS]))
    save_adapter(model, tmp_path / "a")
    loaded = load_adapter(_tiny(), tmp_path / "a")
    torch.testing.assert_close(loaded(torch.tensor([IDS])), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sliding-window"):
        apply_prefix_tuning(_tiny(sliding_window=4), 2)
