"""Folders made from transformers' default configs at a small vocabulary: their default token ids often lie
past the vocabulary (GPT-2's 50256, Phi-3's 32000, OLMo 2's 50279, CLIP's 49406/49407). transformers warns and
loads them; groundup loads them too, warns once naming the field, and computes the same logits."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import VOCAB, hf_configs, hf_encdec_configs, randomize_

import groundup as gu

TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# one variant of each decoder family: hf_configs' tiny sizes, with the config class's default token ids
DECODERS = ["gpt2", "opt", "gpt_neox", "falcon", "mpt", "llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3",
            "phi3", "bloom", "olmo2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


# transformers builds the padding row of these models' embeddings at pad_token_id, so it cannot build one
# whose pad id lies past the vocabulary (Phi-3's default pad is its eos, 32000): the tiny config's pad stays
PAD_IN_VOCAB = {"phi3"}


def _with_default_ids(config, name: str = ""):
    default = type(config)()
    for field in TOKEN_FIELDS:
        if hasattr(default, field) and not (field == "pad_token_id" and name in PAD_IN_VOCAB):
            setattr(config, field, getattr(default, field))
    return config


def _out_of_vocab(config) -> list[str]:
    out = []
    for name in TOKEN_FIELDS:
        value = getattr(config, name, None)
        ids = value if isinstance(value, list) else [] if value is None else [value]
        if any(i >= config.vocab_size for i in ids):
            out.append(name)
    return out


def _load(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = gu.from_pretrained(path)
    return model, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", DECODERS)
def test_default_token_ids_load_and_match(name, tmp_path):
    import transformers as T

    config = _with_default_ids(hf_configs()[name], name)
    ref = randomize_(T.AutoModelForCausalLM.from_config(config, attn_implementation="eager"), seed=3).eval()
    ref.save_pretrained(tmp_path)
    model, messages = _load(tmp_path)
    for field in _out_of_vocab(config):  # named once, whatever else warned
        assert sum(field in m and "vocab" in m for m in messages) == 1, (field, messages)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids).logits, atol=1e-4, rtol=0)


# Marian's and Whisper's defaults (pad 58100, 50256) cannot be built by transformers at a small vocabulary: their
# embeddings' padding row is the pad id
@pytest.mark.parametrize("name", ["bert-mlm", "t5", "switch"])
def test_default_token_ids_of_encoders_and_seq2seq(name, tmp_path):
    import transformers as T

    config, cls_name = hf_encdec_configs()[name]
    ref = randomize_(getattr(T, cls_name)(_with_default_ids(config)), seed=6).eval()
    ref.save_pretrained(tmp_path)
    model, _ = _load(tmp_path)
    g = torch.Generator().manual_seed(7)
    batch = {"input_ids": torch.randint(3, VOCAB, (2, 6), generator=g)}
    if model.config.arch == "seq2seq":
        batch["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 4), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), ref(**batch).logits, atol=1e-4, rtol=0)


def test_every_family_with_ids_past_the_vocabulary_is_covered():
    """The families whose defaults lie past a small vocabulary are among those tested (the test means something)."""
    hit = {name for name in DECODERS if _out_of_vocab(_with_default_ids(hf_configs()[name], name))}
    assert {"gpt2", "phi3", "olmo2", "olmoe"} <= hit


def test_generation_never_stops_on_an_id_no_token_equals(tmp_path):
    """GPT-2's default eos (50256) in a 97-token vocabulary: greedy decoding runs to max_new_tokens, as
    transformers' does, with the same tokens."""
    import transformers as T

    config = _with_default_ids(hf_configs()["gpt2"])
    ref = randomize_(T.AutoModelForCausalLM.from_config(config), seed=4).eval()
    ref.save_pretrained(tmp_path)
    model, _ = _load(tmp_path)
    ids = torch.tensor([[5, 6, 7]])
    want = ref.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    got = gu.generate(model, ids, max_new_tokens=6)
    assert got.shape == (1, 9)
    assert torch.equal(got, want)


def test_config_warns_for_an_id_past_the_vocabulary_and_refuses_what_cannot_be_an_id():
    with pytest.warns(UserWarning, match=r"eos_token_id=50256 .*vocab_size=97"):
        gu.Config(vocab_size=97, d_model=16, n_layers=1, n_heads=2, eos_token_id=50256)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="bos_token_id"):
            gu.Config(vocab_size=97, d_model=16, n_layers=1, n_heads=2, bos_token_id=bad)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_with_default_text_ids(kind, tmp_path):
    """CLIPTextConfig's defaults (bos 49406, eos 49407) at a 97-token vocabulary: transformers pools at the first
    position equal to the eos id, which no token is, so at position 0; groundup pools where it pools."""
    import transformers as T

    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                  patch_size=8)
    if kind == "clip":
        config = T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        ref = T.CLIPModel(config)
    else:
        config = T.SiglipConfig(text_config=text, vision_config=vision)
        ref = T.SiglipModel(config)
    assert config.text_config.eos_token_id >= VOCAB
    randomize_(ref, seed=5).eval().save_pretrained(tmp_path)
    model, messages = _load(tmp_path)
    assert any("eos_token_id" in m for m in messages), messages
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    px = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = ref(input_ids=ids, pixel_values=px), model(input_ids=ids, pixel_values=px)
        torch.testing.assert_close(got.text_embeds, want.text_embeds, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.logits_per_image, want.logits_per_image, atol=1e-4, rtol=0)
