"""LoRA and IA3 adapters on encoders (BERT) and encoder-decoders (T5, Marian) interchange with peft in both
directions, with the same logits: the adapter io reads the one family registry, whatever the architecture."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.peft import apply_ia3, apply_lora, ia3_layers, load_adapter, lora_layers, save_adapter

SRC = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30], [8, 4, 19, 2, 6, 13, 1, 17]])
TGT = torch.tensor([[0, 12, 7, 3, 9], [0, 4, 4, 21, 5]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
# groundup target names -> what peft is given for the same layers, per family
LORA = {"bert-mlm": (["q_proj", "v_proj", "up_proj"], ["query", "value", "intermediate.dense"]),
        "t5": (["q_proj", "v_proj", "down_proj"], ["q", "v", "wo"]),
        "marian": (["q_proj", "v_proj", "up_proj"], ["q_proj", "v_proj", "fc1"])}
# (groundup targets, groundup feedforward, peft targets, peft feedforward)
IA3 = {"bert-mlm": (["k_proj", "v_proj", "up_proj"], ["up_proj"], ["key", "value", "intermediate.dense"],
                    ["intermediate.dense"]),
       "t5": (["k_proj", "v_proj", "down_proj"], ["down_proj"], ["k", "v", "wo"], ["wo"]),
       "marian": (["k_proj", "v_proj", "down_proj"], ["down_proj"], ["k_proj", "v_proj", "fc2"], ["fc2"])}


def _ours(model) -> torch.Tensor:
    with torch.no_grad():
        if model.config.arch == "encoder":
            return model(SRC, attention_mask=MASK)
        return model(SRC, attention_mask=MASK, decoder_input_ids=TGT)


def _theirs(model) -> torch.Tensor:
    with torch.no_grad():
        if getattr(model.config, "is_encoder_decoder", False):
            return model(input_ids=SRC, attention_mask=MASK, decoder_input_ids=TGT).logits
        return model(input_ids=SRC, attention_mask=MASK).logits


def _randomize(model, names: tuple[str, ...], seed: int, around: float = 0.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                p.copy_(around + torch.randn(p.shape, generator=g) * 0.3)


def _both_ways(path, ref, ours, peft_config, part: str, around: float, layers, tmp_path) -> None:
    """ours -> peft and peft -> ours, with the same logits each way (adapter weights randomised)."""
    import peft

    _randomize(ours, (part,), seed=1, around=around)
    save_adapter(ours, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(ref, tmp_path / "ours").eval()
    torch.testing.assert_close(_theirs(pm), _ours(ours), atol=1e-4, rtol=1e-4)
    pm.unload()

    pm = peft.get_peft_model(ref, peft_config)
    _randomize(pm, (part,), seed=2, around=around)
    pm.eval()
    want = _theirs(pm)
    pm.save_pretrained(tmp_path / "theirs")
    pm.unload()
    mine = load_adapter(gu.from_pretrained(path), tmp_path / "theirs")
    assert len(layers(mine)) == len(layers(ours))
    torch.testing.assert_close(_ours(mine), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(LORA))
def test_lora_both_ways(name, hf_encdec_folder, tmp_path):
    import peft

    path, ref = hf_encdec_folder(name)
    ours_targets, peft_targets = LORA[name]
    ours = apply_lora(gu.from_pretrained(path), r=3, alpha=6, target_modules=ours_targets)
    theirs = peft.LoraConfig(r=2, lora_alpha=5, target_modules=peft_targets)
    _both_ways(path, ref, ours, theirs, "lora_", 0.0, lora_layers, tmp_path)


@pytest.mark.parametrize("name", list(IA3))
def test_ia3_both_ways(name, hf_encdec_folder, tmp_path):
    import peft

    path, ref = hf_encdec_folder(name)
    ours_targets, ours_ff, peft_targets, peft_ff = IA3[name]
    ours = apply_ia3(gu.from_pretrained(path), target_modules=ours_targets, feedforward_modules=ours_ff)
    theirs = peft.IA3Config(target_modules=peft_targets, feedforward_modules=peft_ff)
    _both_ways(path, ref, ours, theirs, "ia3_l", 1.0, ia3_layers, tmp_path)
