"""AWQ (quant/awq.py): folding keeps the float block exact, the scale and clip searches never do worse than
round to nearest and do better on outlier channels, a whole model quantizes, saves and reloads."""

from __future__ import annotations

import json

import pytest
import torch

import groundup as gu
from groundup.nn.gptq_linear import GPTQLinear
from groundup.quant.awq import fake_quant, fold, groups_of, quantize_awq, search_clip, search_scale


def _model(**kw) -> gu.CausalLM:
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=97, d_model=64, n_heads=4, n_kv_heads=4, d_ff=128, **kw)
    model = gu.CausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so that folding into them is visible
        for b in model.blocks:
            b.attn_norm.weight.uniform_(0.5, 1.5)
            b.mlp_norm.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_folding_a_scale_leaves_the_float_block_unchanged(offset):
    model = _model(norm_weight_offset=offset)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
        block = model.blocks[0]
        groups = groups_of(block, "blocks.0.")
        assert [g[1] for g in groups] == [["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj"],
                                          ["blocks.0.attn.o_proj"], ["blocks.0.mlp.gate_proj", "blocks.0.mlp.up_proj"],
                                          ["blocks.0.mlp.down_proj"]]
        for prev, names, _ in groups:
            width = model.get_submodule(names[0]).in_features
            s = torch.rand(width, generator=torch.Generator().manual_seed(width)) * 3 + 0.2
            fold(prev, s)
            for n in names:
                model.get_submodule(n).weight.mul_(s)
        torch.testing.assert_close(model(ids), want, rtol=1e-4, atol=1e-4)


def test_the_searches_beat_round_to_nearest_on_outlier_channels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 128, generator=g)
    x[:, :4] *= 30  # a few channels with large activations, as in LLMs
    lin = torch.nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=g) * 0.05)
    w = lin.weight.detach()
    err = lambda q: float(((x @ (w - q).t()) ** 2).mean())
    plain = err(fake_quant(w, 4, 64))
    s, scaled_err = search_scale(x, [lin], None, 4, 64)
    assert scaled_err <= plain + 1e-12
    assert err(fake_quant(w * s, 4, 64) / s) < 0.7 * plain  # protecting the salient channels pays
    clip = search_clip(x, w, 4, 64)
    assert err(fake_quant(w, 4, 64, clip)) <= plain + 1e-12


def test_an_awq_model_is_close_to_float_and_reloads(tmp_path):
    model = _model()
    ids = torch.randint(0, 97, (8, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids)
        quantize_awq(model, ids, group_size=32, grid=5, search_tokens=128, progress=False)
        got = model(ids)
    assert isinstance(model.blocks[1].attn.o_proj, GPTQLinear) and model.quantization.quantizer == "awq"
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="batchmean")
    assert kl / ids.shape[1] < 2e-2
    model.save_pretrained(tmp_path / "awq")
    qc = json.loads((tmp_path / "awq" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["group_size"] == 32
    with torch.no_grad():
        assert torch.equal(gu.from_pretrained(tmp_path / "awq")(ids), got)


def test_layouts_awq_cannot_fold_into_are_refused_first():
    model = _model(norm_placement="post")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="pre-norm blocks"):
        quantize_awq(model, torch.zeros(1, 8, dtype=torch.long))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
