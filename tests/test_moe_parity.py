"""SwitchTransformers against transformers: logits with tokens really dropped by the expert capacity, the
router z-loss and balance loss of both stacks, greedy generation; a saved groundup Switch model loads back."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB

import groundup as gu
from groundup.nn.moe import moe_layers


def _batch(src_len: int = 12, dec_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dec = torch.randint(3, VOCAB, (2, dec_len), generator=g)
    dec[:, 0] = 0  # decoder start token
    return {"input_ids": torch.randint(3, VOCAB, (2, src_len), generator=g), "decoder_input_ids": dec}


def test_switch_logits_and_router_losses_match_transformers_with_tokens_dropped(hf_encdec_folder):
    path, ref = hf_encdec_folder("switch")
    model = gu.from_pretrained(path).eval()
    cfg = model.config
    assert cfg.moe.router == "switch" and cfg.moe.expert_capacity == 2 and cfg.moe.moe_layers == [1, 3]
    batch = _batch()
    with torch.no_grad():
        want = ref(**batch, labels=batch["decoder_input_ids"], output_router_logits=True)
        logits, aux = model(**batch, return_aux_loss=True)
    dropped = sum(m.dropped.item() for _, m in moe_layers(model))
    assert dropped > 0, "the capacity must bind for the comparison to test dropping"
    torch.testing.assert_close(logits, want.logits, atol=1e-4, rtol=0)
    z = want.encoder_z_loss + want.decoder_z_loss
    balance = want.encoder_aux_loss + want.decoder_aux_loss
    torch.testing.assert_close(aux, cfg.moe.router_z_loss_coef * z + cfg.moe.router_aux_loss_coef * balance,
                               atol=1e-6, rtol=1e-5)
    # each term on its own: the models share one Config, whose coefficients pick the term
    cfg.moe.router_aux_loss_coef, cfg.moe.router_z_loss_coef = 0.0, 1.0
    torch.testing.assert_close(model(**batch, return_aux_loss=True)[1], z, atol=1e-5, rtol=1e-5)
    cfg.moe.router_aux_loss_coef, cfg.moe.router_z_loss_coef = 1.0, 0.0
    torch.testing.assert_close(model(**batch, return_aux_loss=True)[1], balance, atol=1e-6, rtol=1e-5)


def test_switch_without_capacity_pressure_differs_only_where_tokens_were_dropped(hf_encdec_folder):
    """The drops are what the parity above exercises: with room for every token the logits change."""
    path, _ = hf_encdec_folder("switch")
    model = gu.from_pretrained(path).eval()
    batch = _batch()
    with torch.no_grad():
        tight = model(**batch)
        model.config.moe.expert_capacity = 64
        roomy = model(**batch)
    assert (tight - roomy).abs().max() > 1e-3


def test_switch_greedy_generation_matches_transformers(hf_encdec_folder):
    path, ref = hf_encdec_folder("switch")
    model = gu.from_pretrained(path)
    src = _batch(src_len=10, seed=3)["input_ids"]
    with torch.no_grad():
        want = ref.generate(src, do_sample=False, max_new_tokens=8, use_cache=True)
    got = gu.generate(model, src, 8)
    assert torch.equal(got, want[:, : got.shape[1]])


def test_switch_groundup_to_hf(hf_encdec_folder, tmp_path):
    import transformers as T

    path, _ = hf_encdec_folder("switch")
    model = gu.from_pretrained(path).eval()
    model.save_pretrained(tmp_path / "out")
    back = T.SwitchTransformersForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    batch = _batch(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), back(**batch).logits, atol=1e-4, rtol=0)
    assert gu.from_pretrained(tmp_path / "out").config.moe.moe_layers == [1, 3]


def test_switch_layout_refuses_what_it_cannot_hold(hf_encdec_folder, tmp_path):
    path, _ = hf_encdec_folder("switch")
    model = gu.from_pretrained(path)
    model.config.moe.moe_layers = [0, 3]  # encoder layer 0: not "every k-th with i % k == 1"
    with pytest.raises(Exception, match="moe_layers"):
        model.save_pretrained(tmp_path / "bad")
