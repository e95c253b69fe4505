"""`groundup finetune`: LoRA and full fine-tuning from the command line; the base stays frozen under LoRA,
the adapter and merged folders reproduce the trained model, a run resumes, bad input fails first."""

from __future__ import annotations

import json
import random

import pytest
import torch

import groundup as gu
from groundup.cli import main
from groundup.peft import load_adapter


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny llama folder with a tokenizer, and a JSONL of 'repeat' instructions."""
    rng = random.Random(0)
    words = "cat dog sun red blue tree fish bird".split()
    rows = []
    for _ in range(120):
        w = " ".join(rng.choice(words) for _ in range(3))
        rows.append({"prompt": f"repeat: {w}", "completion": f" {w} {w}"})
    tok = gu.Tokenizer.train([json.dumps(r) for r in rows] * 3, 300, special_tokens=["<|endoftext|>"],
                             eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=tok.vocab_size, d_model=48, n_heads=4, n_kv_heads=2,
                                                 d_ff=96)
    folder = tmp_path_factory.mktemp("base")
    model = gu.CausalLM(cfg)
    with torch.no_grad():  # a head of a trained model's scale, so that the adapted layers can move the logits
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, data


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))


def test_lora_trains_the_adapter_only_and_its_folders_reproduce_the_model(base, tmp_path, capsys):
    folder, data = base
    out = tmp_path / "run"
    assert main(["finetune", str(folder), "--data", str(data), "--method", "lora", "--r", "4", "--alpha", "8",
                 "--target-modules", "q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "--steps", "40",
                 "--batch-size", "8",
                 "--lr", "2e-2", "--eval-every", "20", "--save-every", "20", "--out", str(out), "--merge",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "trainable of" in text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0] - 0.5  # it learnt the task
    assert (out / "checkpoint" / "adapter_config.json").is_file()
    assert not (out / "checkpoint" / "model.safetensors").exists()  # the frozen base is not copied
    ids = gu.Tokenizer.from_pretrained(folder).encode("repeat: cat dog sun")
    tuned = load_adapter(gu.from_pretrained(folder), out / "adapter")
    merged = gu.from_pretrained(out / "merged")
    torch.testing.assert_close(_logits(merged, ids), _logits(tuned, ids), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_logits(gu.from_pretrained(folder), ids), _logits(tuned, ids), atol=1e-3)
    # `groundup generate --adapter` continues as the merged model does
    capsys.readouterr()
    assert main(["generate", str(folder), "repeat: cat dog sun", "--adapter", str(out / "adapter"),
                 "--max-new-tokens", "6"]) == 0
    with_adapter = capsys.readouterr().out
    assert main(["generate", str(out / "merged"), "repeat: cat dog sun", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == with_adapter
    assert main(["generate", str(folder), "x", "--adapter", str(tmp_path)]) == 2
    assert "no adapter_config.json there" in capsys.readouterr().err
    # resume: 20 more steps from the adapter checkpoint
    assert main(["finetune", str(folder), "--data", str(data), "--method", "lora", "--r", "4", "--alpha", "8",
                 "--target-modules", "q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "--steps", "60",
                 "--batch-size", "8",
                 "--lr", "2e-2", "--eval-every", "20", "--save-every", "20", "--out", str(out), "--resume",
                 "--quiet"]) == 0
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 60


def test_qlora_trains_adapters_over_a_4bit_base_and_merges(base, tmp_path, capsys):
    folder, data = base
    out = tmp_path / "qlora"
    args = ["finetune", str(folder), "--data", str(data), "--method", "qlora", "--r", "4", "--alpha", "8",
            "--target-modules", "q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "--batch-size", "8",
            "--lr", "2e-2", "--eval-every", "20", "--save-every", "20", "--compute-dtype", "float32",
            "--out", str(out), "--quiet"]
    assert main([*args, "--steps", "40", "--merge"]) == 0
    text = capsys.readouterr().out
    assert "requantize error" in text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0] - 0.5  # it learnt the task over 4-bit weights
    assert not (out / "checkpoint" / "model.safetensors").exists()  # the 4-bit base is not copied either
    ids = gu.Tokenizer.from_pretrained(folder).encode("repeat: cat dog sun")
    base4 = gu.quant.load_quantized(folder, "nf4", compute_dtype=torch.float32)
    assert isinstance(base4.blocks[0].attn.q_proj, gu.quant.NF4Linear)
    tuned = load_adapter(base4, out / "adapter")  # an ordinary peft LoRA folder, over the NF4 base
    merged = gu.from_pretrained(out / "merged")  # float: dequantized + BA
    assert merged.quantization is None and merged.blocks[0].attn.q_proj.weight.dtype == torch.bfloat16
    want = _logits(tuned, ids).float()
    torch.testing.assert_close(_logits(merged, ids).float(), want, atol=3e-2 * float(want.abs().max()), rtol=0)
    assert main([*args, "--steps", "60", "--resume"]) == 0
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 60


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_full_finetuning_writes_a_model_checkpoint(base, tmp_path, optimizer):
    folder, data = base
    out = tmp_path / "full"
    assert main(["finetune", str(folder), "--data", str(data), "--method", "full", "--steps", "4",
                 "--batch-size", "4", "--optimizer", optimizer, "--out", str(out), "--quiet"]) == 0
    if optimizer == "adamw8bit":  # and it resumes from its 8-bit state
        assert main(["finetune", str(folder), "--data", str(data), "--method", "full", "--steps", "6",
                     "--batch-size", "4", "--optimizer", optimizer, "--out", str(out), "--resume", "--quiet"]) == 0
    model = gu.from_pretrained(out / "checkpoint")
    before = gu.from_pretrained(folder)
    assert not torch.equal(model.blocks[0].attn.q_proj.weight, before.blocks[0].attn.q_proj.weight)


def test_ia3_writes_a_peft_ia3_adapter_and_bitfit_needs_biases(base, tmp_path, capsys):
    folder, data = base
    out = tmp_path / "ia3"
    ia3 = ["finetune", str(folder), "--data", str(data), "--method", "ia3", "--modules-to-save", "norm",
           "--batch-size", "4", "--save-every", "2", "--out", str(out), "--quiet"]
    assert main([*ia3, "--steps", "3"]) == 0
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "IA3" and meta["modules_to_save"] == ["model.norm"]
    tuned = load_adapter(gu.from_pretrained(folder), out / "adapter")
    assert not torch.equal(tuned.blocks[0].mlp.down_proj.ia3_l, torch.ones_like(tuned.blocks[0].mlp.down_proj.ia3_l))
    assert not torch.equal(tuned.norm.weight, gu.from_pretrained(folder).norm.weight)  # the final norm trained
    assert main([*ia3, "--steps", "5", "--resume"]) == 0  # the saved norm resumes with the adapter
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 5
    assert main([*ia3[:5], "prompt", *ia3[6:], "--steps", "1"]) == 2
    assert "--modules-to-save goes with --method lora, qlora or ia3, not prompt" in capsys.readouterr().err
    assert main(["finetune", str(folder), "--data", str(data), "--method", "bitfit", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 2
    assert "has none" in capsys.readouterr().err


def test_prompt_tuning_trains_the_soft_prompt_on_prefixed_examples(base, tmp_path, capsys):
    from groundup.peft import soft_prompt

    folder, data = base
    out = tmp_path / "prompt"
    assert main(["finetune", str(folder), "--data", str(data), "--method", "prompt", "--num-virtual-tokens", "4",
                 "--prompt-init-text", "repeat", "--steps", "6", "--batch-size", "4", "--out", str(out),
                 "--quiet"]) == 0
    assert "virtual ids" in capsys.readouterr().out
    tuned = load_adapter(gu.from_pretrained(folder), out / "adapter")
    soft = soft_prompt(tuned)
    assert soft.n == 4 and soft.prompt_ids()[0] == tuned.config.vocab_size
    init = gu.Tokenizer.from_pretrained(folder).encode("repeat", add_special_tokens=False)
    assert not torch.equal(soft.prompt_embeddings[0], tuned.embed.base.weight[init[0]])  # it moved from its init
    # `groundup generate --adapter` puts the virtual ids before the prompt
    tok = gu.Tokenizer.from_pretrained(folder)
    ids = tok.encode("repeat: cat")
    expected = gu.generate(tuned, [soft.prompt_ids() + ids], 5, eos_token_id=tok.eos_token_id)[0, 4 + len(ids):]
    capsys.readouterr()
    assert main(["generate", str(folder), "repeat: cat", "--adapter", str(out / "adapter"),
                 "--max-new-tokens", "5"]) == 0
    text = tok.decode([t for t in expected.tolist() if t != tok.eos_token_id], skip_special_tokens=True)
    assert capsys.readouterr().out == "repeat: cat" + text + "\n"


def test_prefix_tuning_writes_a_peft_prefix_adapter(base, tmp_path):
    from groundup.peft import prefix_of

    folder, data = base
    out = tmp_path / "prefix"
    assert main(["finetune", str(folder), "--data", str(data), "--method", "prefix", "--num-virtual-tokens", "3",
                 "--prefix-projection", "--steps", "4", "--batch-size", "4", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    assert prefix_of(load_adapter(gu.from_pretrained(folder), out / "adapter")).n == 3


def test_bad_input_fails_before_training(base, tmp_path, capsys):
    folder, data = base
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n{\"prompt\": \"x\"}\n")
    out = tmp_path / "never"
    assert main(["finetune", str(folder), "--data", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "bad.jsonl:2: missing field 'completion'" in capsys.readouterr().err
    assert main(["finetune", str(folder), "--data", str(data), "--target-modules", "c_attn", "--out", str(out),
                 "--quiet"]) == 2
    assert "matches no module" in capsys.readouterr().err
    assert main(["finetune", str(folder), "--data", str(data), "--r", "0", "--out", str(out), "--quiet"]) == 2
    assert "rank r=0" in capsys.readouterr().err
    assert not (out / "checkpoint").exists()
