"""peft's modules_to_save: whole modules (embeddings, head, norms) trained next to a LoRA or IA3 adapter and
saved in its folder; the folder round-trips with peft in both directions with the same logits, a run resumes
into it, and bad choices are refused before the model changes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, adamw_steps
from conftest import tiny_llama as _tiny

import groundup as gu
from groundup.peft import (
    AdapterError,
    apply_ia3,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_and_unload,
    save_adapter,
)
from groundup.peft.multi import LoraBank

IDS = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30]])




def _randomize(model, seed: int = 1) -> None:
    """Random LoRA / IA3 weights and moved saved modules, so that every saved tensor shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name,targets,saved,hf_saved", [
    ("llama", ["q_proj"], ["embed", "lm_head", "norm"], ["lm_head", "model.embed_tokens", "model.norm"]),
    # GPT-2: a Conv1D layer saved whole is transposed to HF's [in, out]; its tied embeddings are left alone
    ("gpt2", ["o_proj"], ["norm", r"blocks.1.mlp.up_proj"], ["transformer.h.1.mlp.c_fc", "transformer.ln_f"]),
])
def test_our_adapter_with_saved_modules_loads_in_peft(name, targets, saved, hf_saved, hf_folder, tmp_path):
    import transformers as T
    from peft import PeftModel

    path, _ = hf_folder(name)
    ref = T.AutoModelForCausalLM.from_pretrained(path)  # a copy: peft's unload keeps the trained modules
    ours = gu.from_pretrained(path)
    apply_lora(ours, r=2, alpha=4, target_modules=targets, modules_to_save=saved)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    whole = {n for n in trainable if "lora_" not in n}
    assert whole == {f"{m}.{leaf}" for m in ours.modules_to_save
                     for leaf, _ in ours.get_submodule(m).named_parameters()} and whole
    _randomize(ours)
    save_adapter(ours, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["modules_to_save"] == hf_saved
    peft_model = PeftModel.from_pretrained(ref, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, ours(IDS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["LORA", "IA3"])
def test_a_peft_adapter_with_modules_to_save_loads_here(kind, hf_folder, tmp_path):
    import peft
    import transformers as T

    path, _ = hf_folder("llama")
    ref = T.AutoModelForCausalLM.from_pretrained(path)
    saved = ["embed_tokens", "lm_head", "post_attention_layernorm"]
    cfg = (peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=saved)
           if kind == "LORA" else peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=[
               "down_proj"], modules_to_save=saved))
    peft_model = peft.get_peft_model(ref, cfg)
    _randomize(peft_model, seed=3)
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        want = peft_model(IDS).logits
    ours = load_adapter(gu.from_pretrained(path), tmp_path / "adapter")
    layers = ref.config.num_hidden_layers
    assert ours.modules_to_save == [f"blocks.{i}.mlp_norm" for i in range(layers)] + ["embed", "lm_head"]
    torch.testing.assert_close(ours(IDS), want, atol=1e-4, rtol=1e-4)
    assert ours.embed.weight.requires_grad and not ours.blocks[0].attn_norm.weight.requires_grad


def test_training_moves_only_the_adapter_and_the_saved_modules_and_resumes(tmp_path):
    model = apply_lora(_tiny(), r=2, alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed"])
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adamw_steps(model, IDS)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert moved == {"embed.weight"} | {f"blocks.{i}.attn.{m}_proj.lora_{ab}.weight" for i in range(2) for m in "qv"
                                        for ab in "AB"}
    save_adapter(model, tmp_path / "a")
    # resuming: the same adapter built again, the folder loaded into it
    again = apply_lora(_tiny(), r=2, alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed"])
    load_adapter(again, tmp_path / "a", into_existing=True)
    torch.testing.assert_close(again(IDS), model(IDS), atol=0, rtol=0)
    plain = apply_lora(_tiny(), r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    with pytest.raises(AdapterError, match=r"saves modules \['embed'\], not the model's \[\]"):
        load_adapter(plain, tmp_path / "a", into_existing=True)
    # merged: an ordinary model whose embedding is the trained one
    merged = merge_and_unload(load_adapter(_tiny(), tmp_path / "a"))
    assert merged.modules_to_save == [] and not lora_layers(merged)  # the declared hook, emptied
    torch.testing.assert_close(merged(IDS), model(IDS), atol=1e-5, rtol=1e-5)


def test_ia3_saves_whole_modules_too(tmp_path):
    model = apply_ia3(_tiny(), modules_to_save=["lm_head"])
    _randomize(model)
    save_adapter(model, tmp_path / "ia3")
    torch.testing.assert_close(load_adapter(_tiny(), tmp_path / "ia3")(IDS), model(IDS), atol=1e-5, rtol=1e-5)


def test_bad_choices_are_refused_before_the_model_changes(tmp_path):
    model = _tiny()
    with pytest.raises(ValueError, match="modules_to_save=\\['embed_tokens'\\] matches no module.*embed"):
        apply_lora(model, modules_to_save=["embed_tokens"])
    with pytest.raises(ValueError, match="'blocks.0.attn' overlaps the adapter target 'blocks.0.attn.q_proj'"):
        apply_lora(model, target_modules=["q_proj"], modules_to_save=[r"blocks.0.attn"])
    with pytest.raises(ValueError, match="must be module names"):
        apply_lora(model, modules_to_save=[""])
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    tied = _tiny(tie_embeddings=True)
    with pytest.raises(ValueError, match="'lm_head' is tied to embed"):
        apply_lora(tied, modules_to_save=["lm_head"])
    # an adapter whose saved module does not fit this model
    save_adapter(apply_lora(_tiny(vocab_size=VOCAB + 8), modules_to_save=["embed"]), tmp_path / "wide")
    fresh = _tiny()
    with pytest.raises(AdapterError, match=r"embed.weight has shape \(.*different base model"):
        load_adapter(fresh, tmp_path / "wide")
    assert not lora_layers(fresh)
    # serving many adapters: one with its own embedding cannot share a batch
    save_adapter(apply_lora(_tiny(), modules_to_save=["embed"]), tmp_path / "own_embed")
    with pytest.raises(ValueError, match="trains whole modules \\(embed\\)"):
        LoraBank(_tiny(), [tmp_path / "own_embed"])
