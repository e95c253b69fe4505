"""Config validation: every bad value is refused with the field, its value and the rule."""

from __future__ import annotations

import json

import pytest

import groundup as gu
from groundup.presets import PRESETS


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=100, n_heads=3), "d_model=100 is not divisible by n_heads=3"),
    (dict(n_heads=8, n_kv_heads=3), "n_heads=8 is not divisible by n_kv_heads=3"),
    (dict(pos="xpos"), "pos='xpos' is not one of"),
    (dict(ffn="swish"), "ffn='swish' is not one of"),
    (dict(norm="batchnorm"), "norm='batchnorm'"),
    (dict(norm_placement="middle"), "norm_placement='middle'"),
    (dict(router="random"), "router='random'"),
    (dict(attn_kernel="triton"), "attn_kernel='triton'"),
    (dict(vocab_size=0), "vocab_size=0 must be a positive integer"),
    (dict(n_layers=2, layer_types=["local"]), "layer_types must be a list of n_layers=2 entries"),
    (dict(n_layers=2, layer_types=["local", "sliding"], sliding_window=4), "layer_types holds 'sliding'"),
    (dict(n_layers=2, layer_types=["local", "global"]), "'local' layers but sliding_window is None"),
    (dict(pos="rope", rope_local_theta=10.0), "rope_local_theta needs layer_types"),
    (dict(attn_softcap=0.0), "attn_softcap=0.0 must be a positive number"),
    (dict(arch="seq2seq", norm_placement="sandwich"), "norm_placement='sandwich'"),
    (dict(n_layers=-1), "n_layers=-1"),
    (dict(pos="rope", rotary_fraction=0.0), "rotary_fraction=0.0"),
    (dict(pos="rope", d_model=24, n_heads=8, rotary_fraction=0.5), "rotary dims"),
    (dict(rope_scaling="linear", rope_scaling_factor=0.5), "rope_scaling_factor=0.5"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(sliding_window=0), "sliding_window=0"),
    (dict(sliding_window=8, causal=False), "sliding_window needs causal=True"),
    (dict(n_experts=4, top_k=5), "top_k=5 must be between 1 and n_experts=4"),
    (dict(n_experts=1), "n_experts=1"),
    (dict(shared_norm=True), "shared_norm=True needs residual='parallel'"),
    (dict(residual="parallel", norm_placement="post"), "residual='parallel' needs norm_placement='pre'"),
    (dict(arch="decoder"), "arch='decoder' is not one of"),
    (dict(arch="encoder", causal=True), "causal=True with arch='encoder'"),
    (dict(arch="seq2seq", causal=False), "causal=False with arch='seq2seq'"),
    (dict(n_decoder_layers=2), "n_decoder_layers=2 needs arch='seq2seq'"),
    (dict(arch="seq2seq", n_decoder_layers=0), "n_decoder_layers=0 must be a positive integer"),
    (dict(type_vocab_size=2), "type_vocab_size=2 needs arch='encoder'"),
    (dict(arch="encoder", nsp_head=True), "need pooler=True"),
    (dict(arch="encoder", num_labels=-1), "num_labels=-1 must be >= 0"),
    (dict(arch="encoder", n_experts=4), "n_experts=4: mixture-of-experts"),
    (dict(pos="relative", rel_buckets=1), "rel_buckets=1 must be >= 2"),
    (dict(embed_scale="inv_sqrt_d"), "embed_scale takes none|sqrt_d"),
    (dict(sinusoidal_layout="zigzag"), "sinusoidal_layout='zigzag'"),
])
def test_bad_values_name_field_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gu.Config(**kwargs)


def test_derived_defaults():
    cfg = gu.Config(d_model=64, n_heads=8)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (8, 8, 256)
    assert (cfg.causal, gu.Config(arch="encoder").causal, gu.Config(arch="seq2seq").causal) == (True, False, True)
    assert gu.Config(arch="seq2seq", n_layers=3).n_decoder_layers == 3
    assert gu.Config(d_model=64, n_heads=8, n_kv_heads=1).n_query_groups == 8


def test_replace_revalidates():
    cfg = gu.Config.preset("tiny-llama")
    assert cfg.replace(n_layers=3).n_layers == 3
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        cfg.replace(n_kv_heads=3)


def test_replace_rederives_defaulted_fields():
    """Overriding a preset's size (the pretrain CLI's --d-model/--n-heads) recomputes the head size; an
    explicit head_dim, or one given with the change, stays."""
    cfg = gu.Config.preset("tiny-llama")  # d_model 64, 4 heads of 16
    assert cfg.replace(d_model=256, n_heads=8).head_dim == 32
    assert cfg.replace(d_model=256, n_heads=8, head_dim=16).head_dim == 16
    explicit = gu.Config(vocab_size=32, d_model=64, n_heads=4, head_dim=8)
    assert explicit.replace(d_model=128).head_dim == 8
    mha = gu.Config(vocab_size=32, d_model=64, n_heads=4)
    assert mha.replace(n_heads=8).n_kv_heads == 8 and mha.replace(d_model=96).d_ff == 384
    assert cfg.replace(n_heads=8).n_kv_heads == 2  # GQA stays as set
    t5 = gu.Config(arch="seq2seq", vocab_size=32, d_model=64, n_heads=4, n_layers=2, pos="relative")
    assert t5.replace(n_layers=3).n_decoder_layers == 3


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'.*llama-2-7b"):
        gu.Config.preset("gpt5")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips(name, tmp_path):
    cfg = gu.Config.preset(name)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert gu.Config.load(str(path)) == cfg


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown Config field.*n_embd"):
        gu.Config.from_dict({"n_embd": 32})
