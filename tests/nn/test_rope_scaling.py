"""RoPE scaling types: groundup's inverse frequencies (and YaRN's attention factor) equal transformers'
ROPE_INIT_FUNCTIONS for the same config; the scaled logits are checked by the parity tests' llama3-rope and
qwen2-yarn families."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.checkpoint.hf import config_from_hf
from groundup.nn.position import rope_inv_freq, yarn_attention_factor

CASES = [
    ("llama", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}),
    ("llama", {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}),
    ("llama", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
               "original_max_position_embeddings": 2048, "rope_theta": 10000.0}),
    ("qwen2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1e6}),
    ("qwen2", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
               "beta_fast": 16, "beta_slow": 2}),
    ("qwen2", {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048, "rope_theta": 10000.0,
               "attention_factor": 1.25}),
]


@pytest.mark.parametrize("family,params", CASES)
def test_inverse_frequencies_and_attention_factor_match_transformers(family, params):
    import transformers as T
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cls = {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config}[family]
    hf = cls(hidden_size=2048, num_attention_heads=16, num_key_value_heads=8, num_hidden_layers=1,
             intermediate_size=64, vocab_size=100, max_position_embeddings=131072, rope_parameters=dict(params))
    want, attention_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf)
    cfg = config_from_hf(hf.to_dict())
    assert (cfg.rope.scaling, cfg.rope.original_max_seq_len) == (params["rope_type"],
                                                                 params["original_max_position_embeddings"])
    torch.testing.assert_close(rope_inv_freq(cfg), want.float(), atol=1e-6, rtol=1e-6)
    ours = yarn_attention_factor(cfg, cfg.rope.factor) if cfg.rope.scaling == "yarn" else 1.0
    assert ours == pytest.approx(attention_factor, rel=1e-12)


@pytest.mark.parametrize("seq_len", [None, 100, 4096, 4097, 50000])
@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_dynamic_ntk_frequencies_match_transformers_at_each_length(seq_len, factor):
    """Dynamic NTK: plain RoPE up to max_position_embeddings (4096), a larger base for longer inputs."""
    import transformers as T
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = T.LlamaConfig(hidden_size=512, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
                       intermediate_size=64, vocab_size=100, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "dynamic", "factor": factor, "rope_theta": 10000.0})
    want, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, None, seq_len=seq_len)
    cfg = config_from_hf(hf.to_dict())
    assert (cfg.rope.scaling, cfg.rope.factor) == ("dynamic", factor)
    got = rope_inv_freq(cfg, seq_len=seq_len)
    torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=1e-6)
    assert torch.equal(got, rope_inv_freq(cfg, scaling="none")) == (seq_len is None or seq_len <= 4096)


@pytest.mark.parametrize("seq_len", [None, 4096, 4097])
@pytest.mark.parametrize("attention", [None, 1.1])
def test_longrope_frequencies_and_attention_factor_match_transformers(seq_len, attention):
    """Phi-3.5-mini's layout: 4k original context, 128k max, short divisors within 4k, long ones past it."""
    import transformers as T
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    g = torch.Generator().manual_seed(0)
    short, long = (1 + torch.rand(32, generator=g)).tolist(), (1 + 40 * torch.rand(32, generator=g)).tolist()
    params = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short, "long_factor": long,
              **({"attention_factor": attention} if attention else {})}
    hf = T.Phi3Config(hidden_size=512, num_attention_heads=8, num_key_value_heads=8, num_hidden_layers=1,
                      intermediate_size=64, vocab_size=100, max_position_embeddings=131072,
                      original_max_position_embeddings=4096, rope_parameters=params, pad_token_id=0,
                      eos_token_id=1, bos_token_id=1)
    want, factor = ROPE_INIT_FUNCTIONS["longrope"](hf, None, seq_len=seq_len)
    cfg = config_from_hf(hf.to_dict())
    assert (cfg.rope.scaling, cfg.rope.original_max_seq_len, cfg.rope.factor) == ("longrope", 4096, 32.0)
    torch.testing.assert_close(rope_inv_freq(cfg, seq_len=seq_len), want.float(), atol=1e-6, rtol=1e-6)
    assert yarn_attention_factor(cfg, cfg.rope.factor) == pytest.approx(factor, rel=1e-12)


def test_llama3_needs_its_original_context_and_keeps_max_seq_len_as_context():
    with pytest.raises(ValueError, match="rope_original_max_seq_len"):
        gu.Config.preset("tiny-llama", rope_scaling="llama3", rope_scaling_factor=8.0)
    cfg = gu.Config.preset("llama-3.1-8b")
    assert cfg.context_length == 131072  # max_position_embeddings is already the extended context
    with pytest.raises(ValueError, match="rope_low_freq_factor"):
        cfg.replace(rope_low_freq_factor=4.0)


LEGACY = [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "beta_fast": 16.0},
    {"type": "linear", "factor": 3.0},  # the oldest spelling: "type"
]


@pytest.mark.parametrize("legacy", LEGACY)
def test_old_rope_scaling_spelling_reads_as_the_transformers_5_one(legacy):
    """config.json from before transformers 5: rope_theta at the top and a rope_scaling dict."""
    base = dict(model_type="llama", vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=131072)
    kind = legacy.get("rope_type", legacy.get("type"))
    rest = {k: v for k, v in legacy.items() if k not in ("type", "rope_type")}
    new = {**base, "rope_parameters": {"rope_theta": 50000.0, "rope_type": kind, **rest}}
    old = {**base, "rope_theta": 50000.0, "rope_scaling": legacy}
    assert config_from_hf(old) == config_from_hf(new)
    assert config_from_hf(old).rope.scaling == new["rope_parameters"]["rope_type"]


def test_gemma3_old_flat_rope_fields_read_as_the_per_layer_dicts():
    base = dict(model_type="gemma3_text", vocab_size=100, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=131072,
                sliding_window=512, query_pre_attn_scalar=16)
    old = {**base, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    new = {**base, "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                       "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    cfg = config_from_hf(old)
    assert cfg == config_from_hf(new)
    assert (cfg.rope.theta, cfg.rope_local_theta) == (1e6, 1e4)
    assert (cfg.rope.scaling, cfg.rope.factor) == ("linear", 8.0)
    assert cfg.layer_types == ["local"] * 5 + ["global"]  # sliding_window_pattern 6 by default
