"""QLoRA: bitsandbytes 4-bit folders in and out of transformers, LoRA training over NF4 layers equal to
transformers + bitsandbytes + peft, merging, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

import groundup as gu
from groundup.checkpoint.hf import module_name_to_hf
from groundup.checkpoint.io import CheckpointError
from groundup.nn.qlinear import NF4Linear

bnb_functional = pytest.importorskip("bitsandbytes.functional")
T = pytest.importorskip("transformers")
peft_lib = pytest.importorskip("peft")
from safetensors.torch import load_file  # noqa: E402

from tests.conftest import portable_bitsandbytes  # noqa: E402

portable_bitsandbytes()  # the format's own arithmetic on every CPU (tests/conftest.py says why)

IDS = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
TARGETS = ["q_proj", "v_proj", "down_proj"]


def bnb_config(double_quant: bool = True, quant_type: str = "nf4"):
    return T.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=double_quant)


@pytest.fixture(scope="module")
def bnb_folder(hf_folder, tmp_path_factory):
    """bnb_folder(family, double_quant, quant_type) -> (float folder, the folder transformers saved in 4 bits)."""
    cache = {}

    def make(family: str, double_quant: bool = True, quant_type: str = "nf4"):
        key = (family, double_quant, quant_type)
        if key not in cache:
            src, _ = hf_folder(family)
            q = T.AutoModelForCausalLM.from_pretrained(src, quantization_config=bnb_config(double_quant, quant_type),
                                                       dtype=torch.bfloat16, device_map="cpu")
            out = tmp_path_factory.mktemp(f"bnb-{family}")
            q.save_pretrained(out)
            cache[key] = (src, out)
        return cache[key]

    return make


def hf_logits(folder, ids=IDS):
    model = T.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("family,double_quant,quant_type", [("llama", True, "nf4"), ("llama", False, "fp4"),
                                                             ("qwen2", True, "nf4"), ("gemma", True, "nf4")])
def test_a_transformers_4bit_folder_loads_with_equal_logits_and_saves_back_byte_identical(
        bnb_folder, family, double_quant, quant_type, tmp_path):
    _, folder = bnb_folder(family, double_quant, quant_type)
    model = gu.from_pretrained(folder)
    assert isinstance(model.blocks[0].attn.q_proj, NF4Linear)
    with torch.no_grad():
        ours = model(IDS).float()
    ref = T.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    for name, layer in model.named_modules():  # every 4-bit weight stands for exactly what it does there
        if isinstance(layer, NF4Linear):
            theirs = ref.get_submodule(module_name_to_hf(model.config, name)).weight
            assert torch.equal(layer.dequantize(torch.float32),
                               bnb_functional.dequantize_4bit(theirs.data, theirs.quant_state).float())
    want = hf_logits(folder)
    # Gemma in bf16 differs by 2.5% of the largest logit already without quantization on these random weights
    # (its (1 + w) norms and scaled embedding round differently in bf16), so its bound is wider
    bound = 5e-2 if family == "gemma" else 1e-2
    torch.testing.assert_close(ours, want, rtol=0, atol=bound * float(want.abs().max()))
    assert family == "gemma" or torch.equal(model.generate(IDS[:, :4], max_new_tokens=6),
                       T.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu").generate(
                           IDS[:, :4], max_new_tokens=6, do_sample=False, min_new_tokens=6)[:, :10])
    model.save_pretrained(tmp_path / "back")
    theirs, back = load_file(folder / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(theirs) == set(back)
    assert [k for k in theirs if not torch.equal(theirs[k], back[k])] == []
    assert torch.equal(hf_logits(tmp_path / "back"), want)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_quantizing_here_gives_the_bytes_transformers_gives(bnb_folder, family, tmp_path):
    src, folder = bnb_folder(family)
    model = gu.from_pretrained(src, dtype=torch.bfloat16)
    gu.quant.quantize(model, "nf4")
    model.save_pretrained(tmp_path / "q")
    theirs, ours = load_file(folder / "model.safetensors"), load_file(tmp_path / "q" / "model.safetensors")
    assert set(theirs) == set(ours)
    assert [k for k in theirs if not torch.equal(theirs[k], ours[k])] == []
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["load_in_4bit"] and cfg["bnb_4bit_use_double_quant"]
    torch.testing.assert_close(hf_logits(tmp_path / "q"), hf_logits(folder), rtol=0, atol=0)


def _peft_pair(folder, seed=0):
    """The same QLoRA model twice: transformers + bitsandbytes + peft, and groundup, with equal LoRA weights
    (B random, so A gets a gradient)."""
    ref = T.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    ref = peft_lib.get_peft_model(ref, peft_lib.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    theirs = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    model = gu.from_pretrained(folder)
    gu.peft.apply_lora(model, r=4, alpha=8, target_modules=TARGETS)
    pairs = {}
    with torch.no_grad():
        for name, layer in gu.peft.lora_layers(model).items():
            hf = module_name_to_hf(model.config, name)
            for part in "AB":
                p = theirs[f"base_model.model.{hf}.lora_{part}.default.weight"]
                getattr(layer, f"lora_{part}").weight.copy_(p)
                pairs[f"{name}.lora_{part}"] = (getattr(layer, f"lora_{part}").weight, p)
    return model, ref, pairs


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_one_qlora_step_equals_transformers_bitsandbytes_peft(bnb_folder, family):
    _, folder = bnb_folder(family)
    model, ref, pairs = _peft_pair(folder)
    assert all(p.dtype == torch.float32 for p, _ in pairs.values())  # adapters in fp32 over bf16, as peft's
    model.train()
    ref.train()
    loss = model(IDS[:, :-1], targets=IDS[:, 1:])
    want = ref(input_ids=IDS, labels=IDS).loss
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    loss.backward()
    want.backward()
    for name, (ours, theirs) in pairs.items():
        rel = (ours.grad - theirs.grad).norm() / theirs.grad.norm()
        assert rel < 1e-2, (name, float(rel))
    # one optimizer step on each: the adapters stay equal
    for params in ([p for p, _ in pairs.values()], [p for _, p in pairs.values()]):
        opt = torch.optim.AdamW(params, lr=1e-2)
        opt.step()
    for name, (ours, theirs) in pairs.items():
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4, msg=name)


def test_the_backward_keeps_no_float_copy_of_the_4bit_weights(bnb_folder):
    """What autograd saves for a QLoRA backward: activations and the adapters, never a dequantized base
    matrix (a layer that let F.linear save it would hold 2 bytes per weight again)."""
    _, folder = bnb_folder("llama")
    model, _, _ = _peft_pair(folder)
    shapes = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, NF4Linear)}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        model(IDS[:, :-1], targets=IDS[:, 1:]).backward()
    assert saved and not shapes & set(saved)


def test_a_qlora_adapter_is_a_peft_folder_and_merges(bnb_folder, tmp_path):
    _, folder = bnb_folder("llama")
    model = _peft_pair(folder, seed=1)[0]
    gu.peft.save_adapter(model, tmp_path / "adapter")
    base = T.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    loaded = peft_lib.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    model.eval()
    with torch.no_grad():
        want = loaded(IDS).logits.float()
        ours = model(IDS).float()
        torch.testing.assert_close(ours, want, rtol=0, atol=1e-2 * float(want.abs().max()))
        with pytest.raises(ValueError, match="quantized"):
            gu.peft.merge_lora(model)
        report = gu.peft.merge_quantized(model, requantize=True)
        assert set(report) == {n for n in gu.peft.lora_layers(_peft_pair(folder)[0])}
        assert all(0 < r["requantize_error"] < 0.2 and r["update"] > 0 for r in report.values())
        assert isinstance(model.blocks[0].attn.q_proj, NF4Linear) and model.quantization.modules
        requantized = model(IDS).float()
    assert not gu.peft.lora_layers(model)
    model.save_pretrained(tmp_path / "requantized")  # still a 4-bit folder transformers reads
    torch.testing.assert_close(hf_logits(tmp_path / "requantized"), requantized, rtol=0,
                               atol=1e-2 * float(want.abs().max()))
    floated = _peft_pair(folder, seed=1)[0].eval()
    with torch.no_grad():
        before = floated(IDS).float()
        gu.peft.merge_and_unload(floated)  # float layers: dequantized + BA in bf16
        assert type(floated.blocks[0].attn.q_proj) is torch.nn.Linear and floated.quantization is None
        # W + BA rounded to bf16 once, where the adapter ran beside the bf16 W in fp32: a 1.5% difference here
        torch.testing.assert_close(floated(IDS).float(), before, rtol=0, atol=3e-2 * float(before.abs().max()))


def test_refusals_name_the_problem(bnb_folder, hf_folder, tmp_path):
    model = gu.from_pretrained(bnb_folder("llama")[1])
    with pytest.raises(ValueError, match="IA3.*quantized|quantized.*LoRA"):
        gu.peft.apply_ia3(model, target_modules=["k_proj"], feedforward_modules=[])
    assert all(p.requires_grad for p in model.parameters() if p.is_floating_point())  # refused before freezing
    # a family whose HF layout fuses q/k/v cannot hold separate 4-bit projections
    gpt2 = gu.from_pretrained(hf_folder("gpt2")[0])
    gu.quant.quantize(gpt2, "nf4")
    with pytest.raises(CheckpointError, match="gpt2.*fuse"):
        gpt2.save_pretrained(tmp_path / "gpt2")
    assert not (tmp_path / "gpt2").exists()
    # LLM.int8 folders and unknown settings
    src = bnb_folder("llama")[1]
    bad = tmp_path / "int8"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    for change, message in [({"load_in_8bit": True, "load_in_4bit": False}, "load_in_8bit"),
                            ({"bnb_4bit_quant_type": "int3"}, "bnb_4bit_quant_type='int3'")]:
        (bad / "config.json").write_text(json.dumps({**cfg, "quantization_config": {**cfg["quantization_config"],
                                                                                      **change}}))
        with pytest.raises(CheckpointError, match=message):
            gu.from_pretrained(bad)


@pytest.mark.parametrize("method,options", [("nf4", {"include_head": True}), ("fp4", {"double_quant": False}),
                                            ("int4", {"group_size": 32, "indivisible": "int8"}), ("int8", {})])
def test_quantizing_while_loading_equals_loading_then_quantizing(hf_folder, method, options):
    """load_quantized never holds the float model, and gives the very tensors quantize gives (qwen2: a tied
    head, quantized from a copy of the embedding when asked; biases on q/k/v)."""
    src, _ = hf_folder("qwen2")
    streamed = gu.quant.load_quantized(src, method, **options)
    whole = gu.from_pretrained(src, dtype=torch.bfloat16)
    gu.quant.quantize(whole, method, **options)
    a, b = streamed.state_dict(), whole.state_dict()
    assert set(a) == set(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert streamed.quantization == whole.quantization and streamed.config == whole.config
    with pytest.raises(CheckpointError, match="quantized already"):
        gu.quant.load_quantized(bnb_folder_path(hf_folder), "nf4")


def bnb_folder_path(hf_folder):
    """A folder with a quantization_config (a groundup int8 copy is enough to be refused)."""
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp()) / "q"
    gu.quant.quantize(gu.from_pretrained(hf_folder("llama")[0]), "int8").save_pretrained(out)
    return out


def test_the_cli_writes_nf4_folders_transformers_loads(hf_folder, tmp_path, capsys):
    from groundup.cli import main

    src, _ = hf_folder("llama")
    out = tmp_path / "nf4"
    assert main(["quantize", str(src), "--to", "nf4", "--out", str(out)]) == 0
    assert "14 linear layers -> nf4 (blocks of 64, double-quantized)" in capsys.readouterr().out
    model = gu.from_pretrained(out)
    assert isinstance(model.blocks[1].mlp.up_proj, NF4Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).float(), hf_logits(out), rtol=0, atol=1e-5)
