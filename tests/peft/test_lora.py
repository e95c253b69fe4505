"""LoRA: starts at the base model, trains only A and B, merges and unmerges exactly, and round-trips
through the peft library's adapter format in both directions with the same logits."""

from __future__ import annotations

import pytest
import torch
from conftest import adamw_steps
from conftest import tiny_llama as _tiny

import groundup as gu
from groundup import calc
from groundup.peft import (
    AdapterError,
    LoraConfig,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)


def _randomize_lora(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.3)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.3)


IDS = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30]])


def test_starts_at_the_base_model_and_trains_only_the_adapters():
    model = _tiny()
    base_out = model(IDS)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    assert torch.equal(model(IDS), base_out)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.{m}_proj.lora_{ab}.weight" for i in range(2) for m in "qv" for ab in "AB"}
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == calc.lora_param_count(model.config, r=4, targets=("q_proj", "v_proj"))
    opt = adamw_steps(model, IDS)
    assert sum(len(s) for s in opt.state.values()) == 2 * len(trainable) + len(trainable)  # step, m, v each
    assert not torch.allclose(model(IDS), base_out, atol=1e-4)  # it learnt something
    after = model.state_dict()
    for k, v in base.items():
        name = k.replace(".q_proj.", ".q_proj.base_layer.").replace(".v_proj.", ".v_proj.base_layer.")
        assert torch.equal(after[name], v), k  # the base did not move


def test_merge_and_unmerge_keep_the_outputs():
    model = apply_lora(_tiny(), r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                                               "down_proj", "gate_proj"])
    _randomize_lora(model)
    want = model(IDS)
    w0 = model.blocks[0].attn.q_proj.base_layer.weight.clone()
    merge_lora(model)
    assert not torch.equal(model.blocks[0].attn.q_proj.base_layer.weight, w0)
    torch.testing.assert_close(model(IDS), want, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model.blocks[0].attn.q_proj.base_layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(IDS), want, atol=1e-5, rtol=1e-5)
    plain = merge_and_unload(model)
    assert not lora_layers(plain) and type(plain.blocks[0].attn.q_proj).__name__ == "Linear"
    torch.testing.assert_close(plain(IDS), want, atol=1e-5, rtol=1e-5)


def test_merged_model_saves_as_a_plain_checkpoint(tmp_path, hf_folder):
    import transformers as T

    path, _ = hf_folder("llama")
    model = apply_lora(gu.from_pretrained(path), r=2, alpha=4, target_modules=["q_proj", "down_proj"])
    _randomize_lora(model)
    want = model(IDS)
    merge_and_unload(model).save_pretrained(tmp_path / "merged")
    ref = T.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(IDS).logits, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,targets", [("llama", ["q_proj", "v_proj"]),
                                          ("mistral", ["k_proj", "o_proj", "gate_proj"]),
                                          ("mixtral", ["q_proj", "w2"]), ("gpt2", ["c_proj", "c_fc"]),
                                          ("qwen2", ["q_proj", "v_proj"]), ("phi3", ["o_proj", "down_proj"]),
                                          ("gemma", ["q_proj", "up_proj"]), ("olmo2", ["k_proj", "gate_proj"]),
                                          ("gemma2", ["q_proj", "o_proj", "down_proj"]),
                                          ("gemma3", ["k_proj", "v_proj", "gate_proj"])])
def test_our_adapter_loads_in_peft_with_the_same_logits(name, targets, hf_folder, tmp_path):
    from peft import PeftModel

    path, ref = hf_folder(name)
    ours = gu.from_pretrained(path)
    gu_targets = [{"w2": "down_proj", "c_proj": "o_proj", "c_fc": "up_proj"}.get(t, t) for t in targets]
    apply_lora(ours, r=3, alpha=6, target_modules=gu_targets)
    _randomize_lora(ours)
    save_adapter(ours, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(ref, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, ours(IDS), atol=1e-4, rtol=1e-4)
    peft_model.unload()  # leave the session's shared reference model as it was


@pytest.mark.parametrize("rslora,name", [(False, "llama"), (True, "llama"), (False, "gemma2")])
def test_a_peft_adapter_loads_here_with_the_same_logits(rslora, name, hf_folder, tmp_path):
    import peft

    path, ref = hf_folder(name)
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=rslora)
    peft_model = peft.get_peft_model(ref, lcfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        want = peft_model(IDS).logits
    peft_model.unload()
    ours = load_adapter(gu.from_pretrained(path), tmp_path / "adapter")
    assert len(lora_layers(ours)) == 3 * ref.config.num_hidden_layers
    torch.testing.assert_close(ours(IDS), want, atol=1e-4, rtol=1e-4)


def test_bad_input_is_refused_before_the_model_changes(tmp_path, hf_folder):
    model = _tiny()
    with pytest.raises(ValueError, match="matches no module.*q_proj"):
        apply_lora(model, target_modules=["c_attn"])
    with pytest.raises(ValueError, match="rank r=0"):
        apply_lora(model, r=0)
    with pytest.raises(ValueError, match="not a linear layer"):
        apply_lora(model, target_modules=["attn"])
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    # an adapter trained on another base model: different width, then more layers
    save_adapter(apply_lora(_tiny(d_model=48), r=2), tmp_path / "wide")
    with pytest.raises(AdapterError, match="shape.*different base model"):
        load_adapter(_tiny(), tmp_path / "wide")
    save_adapter(apply_lora(_tiny(n_layers=3), r=2), tmp_path / "deep")
    with pytest.raises(AdapterError, match="blocks.2.*lacks"):
        load_adapter(_tiny(), tmp_path / "deep")
    with pytest.raises(AdapterError, match="adapter_config.json"):
        load_adapter(_tiny(), tmp_path)
    fresh = _tiny()
    with pytest.raises(AdapterError):
        load_adapter(fresh, tmp_path / "deep")
    assert not lora_layers(fresh)
    # GPT-2 fuses q/k/v: peft's c_attn adapter has no groundup counterpart yet, and says so
    import peft

    gpt2_path, gpt2_ref = hf_folder("gpt2")
    pm = peft.get_peft_model(gpt2_ref, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    pm.save_pretrained(tmp_path / "gpt2")
    pm.unload()
    with pytest.raises(AdapterError, match="c_attn: a fused q/k/v matrix"):
        load_adapter(gu.from_pretrained(gpt2_path), tmp_path / "gpt2")


def test_lora_config_and_layer():
    assert LoraConfig(r=4, alpha=8).scaling == 2.0
    assert LoraConfig(target_modules=r"blocks\.0\.attn\.q_proj").matches("blocks.0.attn.q_proj")
    assert not LoraConfig(target_modules=r"blocks\.0\.attn\.q_proj").matches("blocks.10.attn.q_proj")
    assert LoraConfig(target_modules=["q_proj"]).matches("blocks.3.attn.q_proj")
    assert not LoraConfig(target_modules=["q_proj"]).matches("blocks.3.attn.xq_proj")
    layer = LoraLinear(torch.nn.Linear(6, 5), r=2, alpha=4)
    assert layer.weight.shape == (5, 6) and layer.delta_weight().abs().sum() == 0


def test_peft_adapters_on_phi3_fused_layers_are_refused_by_name(hf_folder, tmp_path):
    import peft

    path, ref = hf_folder("phi3")
    for target, what in (("qkv_proj", "fused q/k/v"), ("gate_up_proj", "fused gate/up")):
        pm = peft.get_peft_model(ref, peft.LoraConfig(r=2, target_modules=[target]))
        pm.save_pretrained(tmp_path / target)
        pm.unload()
        with pytest.raises(AdapterError, match=f"{target}.*{what}"):
            load_adapter(gu.from_pretrained(path), tmp_path / target)
