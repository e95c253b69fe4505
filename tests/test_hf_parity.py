"""Parity with transformers in both directions, for every supported decoder family."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, hf_configs, randomize_

import groundup as gu

FAMILIES = list(hf_configs())
TOL = 1e-4


def _ids(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_hf_to_groundup_logits(name, hf_folder):
    path, ref = hf_folder(name)
    if name == "llama-dynamic":
        # transformers' dynamic rope keeps the base of the longest input it has seen (reset only below the
        # original context), so the shared model's answer depends on earlier tests; groundup's depends on the
        # input alone. A fresh copy has seen nothing.
        ref = type(ref).from_pretrained(path, attn_implementation="eager").eval()
    model = gu.from_pretrained(path)
    ids = _ids()  # 12 tokens: crosses the mistral window of 4
    with torch.no_grad():
        want = ref(ids).logits
        for kernel in ("eager", "sdpa", "flash"):
            got = model.set_attn_kernel(kernel)(ids)
            assert got.shape == want.shape
            assert want.abs().max() > 0.5, "logits too small for the tolerance to mean anything"
            torch.testing.assert_close(got, want, atol=TOL, rtol=0, msg=f"{name} / {kernel}")


@pytest.mark.parametrize("name", FAMILIES)
def test_groundup_to_hf_logits(name, hf_folder, tmp_path):
    import transformers as T

    path, _ = hf_folder(name)
    cfg = gu.from_pretrained(path).config
    model = randomize_(gu.CausalLM(cfg), seed=7).eval()  # a groundup-made model, not a loaded one
    model.save_pretrained(tmp_path / "out")
    ref = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids = _ids(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids), atol=TOL, rtol=0)
    # and back again: the saved folder reloads into an identical groundup model
    again = gu.from_pretrained(tmp_path / "out")
    assert again.config.to_dict() == {**model.config.to_dict(), "name": again.config.name}
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", FAMILIES)
def test_padding_mask_matches_hf(name, hf_folder):
    """Left-padded batch: real tokens see only real keys, exactly as transformers does."""
    path, ref = hf_folder(name)
    if name == "llama-dynamic":  # see test_hf_to_groundup_logits
        ref = type(ref).from_pretrained(path, attn_implementation="eager").eval()
    model = gu.from_pretrained(path)
    ids = _ids(seed=3)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).logits
        for kernel in ("eager", "sdpa", "flash"):
            got = model.set_attn_kernel(kernel)(ids, attention_mask=mask)
            real = mask.bool()
            torch.testing.assert_close(got[real], want[real], atol=TOL, rtol=0, msg=kernel)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_moe_balance_loss_matches_hf(name, hf_folder):
    """The whole model's balance loss: f and P pooled over every MoE layer, as transformers computes it."""
    path, ref = hf_folder(name)
    model = gu.from_pretrained(path)
    ids = _ids(seed=5)
    with torch.no_grad():
        _, aux = model(ids, return_aux_loss=True)
        want = ref(ids, output_router_logits=True).aux_loss * ref.config.router_aux_loss_coef
    torch.testing.assert_close(aux, want, atol=1e-6, rtol=1e-5)


def test_bf16_logits_close_to_hf(hf_folder):
    path, ref = hf_folder("llama")
    model = gu.from_pretrained(path, dtype=torch.bfloat16)
    # a copy: casting the session's shared reference in place would round its weights to bf16 for later tests
    ref16 = type(ref).from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()
    ids = _ids()
    with torch.no_grad():
        got, want = model(ids).float(), ref16(ids).logits.float()
    assert model.embed.weight.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.02)


@pytest.mark.parametrize("name", ["gemma", "gemma2", "gemma3"])
def test_gemma_bf16_embeddings_round_the_scale_as_hf(name, hf_folder):
    """Gemma multiplies by sqrt(d_model) rounded to bf16 (5.657 -> 5.65625 here): bit-identical embeddings."""
    from groundup.models.common import embed

    path, ref = hf_folder(name)
    model = gu.from_pretrained(path, dtype=torch.bfloat16)
    ids = _ids()
    ref16 = type(ref).from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref16.model.embed_tokens(ids)
        got = embed(model.config, model.embed, ids)
        assert torch.equal(got, want)
        assert not torch.equal(got, model.embed(ids) * 32**0.5)  # the unrounded factor differs


def test_sharded_save_loads_in_both(hf_folder, tmp_path):
    import transformers as T

    path, _ = hf_folder("llama")
    model = gu.from_pretrained(path)
    model.save_pretrained(tmp_path / "sharded", max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    ids = _ids()
    with torch.no_grad():
        want = model(ids)
        torch.testing.assert_close(gu.from_pretrained(tmp_path / "sharded")(ids), want, atol=0, rtol=0)
        ref = T.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
        torch.testing.assert_close(ref(ids).logits, want, atol=TOL, rtol=0)
