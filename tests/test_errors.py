"""Errors a user will hit: each is a clear message naming the thing at fault, raised before heavy work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import groundup as gu
from groundup.checkpoint.io import CheckpointError


def test_token_id_out_of_vocabulary():
    model = gu.CausalLM(gu.Config.preset("tiny-llama"))
    with pytest.raises(ValueError, match=r"token id 256, outside the vocabulary \[0, 256\)"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"shape \[batch, seq_len\]"):
        model(torch.tensor([1, 2]))


def test_sequence_longer_than_learned_positions():
    model = gu.CausalLM(gu.Config.preset("tiny-gpt2"))
    with pytest.raises(ValueError, match="sequence length 129 exceeds max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_rope_model_runs_past_max_seq_len():
    model = gu.CausalLM(gu.Config.preset("tiny-llama", max_seq_len=16)).eval()
    assert model(torch.zeros(1, 40, dtype=torch.long)).shape == (1, 40, 256)


def _copy(hf_folder, name, tmp_path):
    src, _ = hf_folder(name)
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_unknown_model_type_lists_supported(hf_folder, tmp_path):
    path = _copy(hf_folder, "llama", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "rwkv"}))
    supported = ("bert, bloom, falcon, gemma, gemma2, gemma3_text, gpt2, gpt_neox, groundup, groundup_seq2seq, llama, "
                 "marian")  # sorted, all
    with pytest.raises(CheckpointError, match=f"model_type=.rwkv. is not a supported family.*{supported}"):
        gu.from_pretrained(path)


def test_missing_and_unexpected_tensors_are_listed(hf_folder, tmp_path):
    path = _copy(hf_folder, "llama", tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.extra\.weight"):
        gu.from_pretrained(path)
    del tensors["model.layers.0.mlp.extra.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): blocks\.1\.mlp\.up_proj\.weight"):
        gu.from_pretrained(path)


def test_shape_mismatch_names_tensor_expected_and_got(hf_folder, tmp_path):
    path = _copy(hf_folder, "llama", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.gate_proj\.weight has shape \(48, 32\), the config "
                                              r"expects \(40, 32\)"):
        gu.from_pretrained(path)


def test_pickle_checkpoint_is_refused_with_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "intermediate_size": 16}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="never unpickles.*safetensors"):
        gu.from_pretrained(tmp_path)


def test_not_a_folder_and_bad_json(tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        gu.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{ nope")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON: line 1"):
        gu.from_pretrained(tmp_path)


def test_unsupported_variant_names_field(hf_folder, tmp_path):
    path = _copy(hf_folder, "gpt2", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx=true is not supported"):
        gu.from_pretrained(path)
    (path / "config.json").write_text(json.dumps({**cfg, "n_head": 5}))
    with pytest.raises(CheckpointError, match="d_model=32 is not divisible by n_heads=5"):
        gu.from_pretrained(path)


def test_failed_save_keeps_previous_folder(tmp_path, monkeypatch):
    model = gu.CausalLM(gu.Config.preset("tiny-llama"))
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("groundup.checkpoint.hf.write_tensors", boom)
    with pytest.raises(OSError, match="disk full"):
        gu.CausalLM(gu.Config.preset("tiny-llama")).save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind


def test_cannot_save_a_layout_transformers_lacks():
    model = gu.CausalLM(gu.Config.preset("tiny-llama", sliding_window=8))
    with pytest.raises(CheckpointError, match="use family='mistral'"):
        model.save_pretrained("unused")
    model = gu.CausalLM(gu.Config.preset("tiny-llama", family="nonesuch"))
    with pytest.raises(CheckpointError, match="Config.family='nonesuch' has no HF layout"):
        model.save_pretrained("unused")


def test_seq2seq_without_encoder_inputs():
    model = gu.Seq2Seq(gu.Config.preset("tiny-t5"))
    tgt = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="Seq2Seq needs encoder inputs: pass input_ids"):
        model(decoder_input_ids=tgt)
    with pytest.raises(ValueError, match="Seq2Seq needs decoder_input_ids"):
        model(tgt)
    with pytest.raises(ValueError, match="decoder_input_ids contain token id 999"):
        model(tgt, decoder_input_ids=torch.full((1, 2), 999))


def test_token_type_ids_out_of_range():
    model = gu.Encoder(gu.Config.preset("tiny-bert"))
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"token_type_ids contain 2, outside \[0, 2\) \(type_vocab_size=2\)"):
        model(ids, token_type_ids=torch.full_like(ids, 2))
    no_types = gu.Encoder(gu.Config.preset("tiny-bert", type_vocab_size=0))
    with pytest.raises(ValueError, match="no segment embeddings"):
        no_types(ids, token_type_ids=torch.zeros_like(ids))


def test_encoder_head_that_is_not_there():
    model = gu.Encoder(gu.Config.preset("bert-base", n_layers=1, vocab_size=50))
    with pytest.raises(ValueError, match="has no mlm_head"):
        model(torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="Encoder needs arch='encoder'"):
        gu.Encoder(gu.Config.preset("tiny-gpt2"))


def test_family_of_another_arch_cannot_be_saved(tmp_path):
    cfg = gu.Config.preset("tiny-t5", family="bert")
    with pytest.raises(CheckpointError, match="family='bert' holds arch='encoder' models"):
        gu.Seq2Seq(cfg).save_pretrained(tmp_path / "x")
    with pytest.raises(CheckpointError, match="Marian layout needs split sinusoidal positions"):
        gu.Seq2Seq(gu.Config.preset("transformer-base", n_layers=1, n_decoder_layers=1, vocab_size=50)
                   ).save_pretrained(tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file(damage, hf_folder, tmp_path):
    path = _copy(hf_folder, "llama", tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|not a safetensors file)") as err:
        gu.from_pretrained(path)
    assert "download" in str(err.value) or "save" in str(err.value)  # says how to get a good file


def test_fused_gate_up_adapter_and_a_bad_longrope_are_refused_by_name(hf_folder, tmp_path):
    from groundup.peft import apply_lora, save_adapter

    path, _ = hf_folder("phi3")
    model = apply_lora(gu.from_pretrained(path), r=2, alpha=4, target_modules=["up_proj"])
    with pytest.raises(ValueError, match=r"gate_up_proj.*adapt down_proj"):
        save_adapter(model, tmp_path / "a")
    folder = _copy(hf_folder, "phi3", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4,
                              "long_factor": [1.0] * 3, "original_max_position_embeddings": 8}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"longrope' needs rope_long_factor: a list of rotary_dim / 2 = 4"):
        gu.from_pretrained(folder)
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4,
                              "long_factor": [1.0] * 4}
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items()
                                                    if k != "original_max_position_embeddings"}))
    with pytest.raises(CheckpointError, match="longrope needs original_max_position_embeddings"):
        gu.from_pretrained(folder)


def test_gemma_variants_outside_the_layouts_are_refused_by_name(hf_folder, tmp_path):
    """The Gemma 3 vision checkpoint, EmbeddingGemma's bidirectional attention, and a soft-capped model saved
    as a layout without caps are refused before any weight is read or written."""
    folder = _copy(hf_folder, "gemma3", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gemma3", "vision_config": {}}))
    with pytest.raises(CheckpointError, match=r"vision tower.*gemma3_text"):
        gu.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "use_bidirectional_attention": True}))
    with pytest.raises(CheckpointError, match="use_bidirectional_attention"):
        gu.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "layer_types": ["chunked_attention"] * 4}))
    with pytest.raises(CheckpointError, match="chunked_attention"):
        gu.from_pretrained(folder)
    capped = gu.CausalLM(gu.Config.preset("tiny-llama", attn_softcap=50.0, attn_scale_dim=12.0))
    with pytest.raises(CheckpointError, match=r"family='llama' cannot hold attn_softcap=50.0, attn_scale_dim=12.0"):
        capped.save_pretrained(tmp_path / "never")
    assert not (tmp_path / "never").exists()
