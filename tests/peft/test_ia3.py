"""IA3: ones at the start (the base model exactly), only the vectors train, merging keeps the outputs, and
adapters round-trip through peft's format in both directions with the same logits."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama as _tiny

import groundup as gu
from groundup.peft import (
    AdapterError,
    IA3Linear,
    apply_ia3,
    ia3_layers,
    load_adapter,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)

IDS = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30]])




def _randomize(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ia3_layers(model).values():
            layer.ia3_l.copy_(1 + 0.5 * torch.randn(layer.ia3_l.shape, generator=g))


def test_starts_at_the_base_and_trains_only_the_vectors():
    model = _tiny()
    with torch.no_grad():  # both passes without autograd: the same attention kernel, so bit-equal outputs
        want = model(IDS)
        apply_ia3(model)  # keys, values, and the FFN activation before down_proj
        assert torch.equal(model(IDS), want)
    cfg = model.config
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    kv = cfg.n_kv_heads * cfg.head_dim
    assert sum(trainable.values()) == cfg.n_layers * (2 * kv + cfg.d_ff)
    assert all(n.endswith("ia3_l") for n in trainable)
    assert model.blocks[0].mlp.down_proj.ia3_l.shape == (1, cfg.d_ff)  # input scaling
    assert model.blocks[0].attn.k_proj.ia3_l.shape == (kv, 1)  # output scaling


def test_merge_keeps_the_outputs():
    model = apply_ia3(_tiny(), target_modules=["k_proj", "v_proj", "up_proj", "down_proj"],
                      feedforward_modules=["down_proj"])
    _randomize(model)
    want = model(IDS)
    merge_lora(model)
    torch.testing.assert_close(model(IDS), want, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(IDS), want, atol=1e-5, rtol=1e-5)
    plain = merge_and_unload(model)
    assert not ia3_layers(plain)
    torch.testing.assert_close(plain(IDS), want, atol=1e-5, rtol=1e-5)


def test_ours_loads_in_peft_and_theirs_loads_here(hf_folder, tmp_path):
    import peft

    path, ref = hf_folder("llama")
    ours = apply_ia3(gu.from_pretrained(path))
    _randomize(ours)
    save_adapter(ours, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(ref, tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(IDS).logits, ours(IDS), atol=1e-4, rtol=1e-4)
    pm.unload()

    pm = peft.get_peft_model(ref, peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                 feedforward_modules=["down_proj"]))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "ia3_l" in n:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
        want = pm(IDS).logits
    pm.save_pretrained(tmp_path / "theirs")
    pm.unload()
    mine = load_adapter(gu.from_pretrained(path), tmp_path / "theirs")
    assert all(isinstance(m, IA3Linear) for m in ia3_layers(mine).values())
    assert mine.blocks[0].mlp.down_proj.feedforward and not mine.blocks[0].attn.k_proj.feedforward
    torch.testing.assert_close(mine(IDS), want, atol=1e-4, rtol=1e-4)


def test_errors(tmp_path):
    model = _tiny()
    with pytest.raises(ValueError, match="matches no module"):
        apply_ia3(model, target_modules=["c_attn"])
    save_adapter(apply_ia3(_tiny()), tmp_path / "a")
    wide = gu.CausalLM(_tiny().config.replace(d_ff=64))
    with pytest.raises(AdapterError, match="down_proj.ia3_l has shape"):
        load_adapter(wide, tmp_path / "a")
