"""Calculators against published figures and against models built on the meta device."""

from __future__ import annotations

import pytest

import groundup as gu
from groundup import calc
from groundup.models import meta_model
from groundup.presets import PRESETS

PUBLISHED = {
    "gpt2": 124_439_808, "gpt2-xl": 1_557_611_200, "llama-2-7b": 6_738_415_616, "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096, "mixtral-8x7b": 46_702_792_704,
    "pythia-12b": 11_846_072_320, "falcon-7b": 6_921_720_704, "mpt-7b": 6_649_286_656,
    "opt-175b": 174_604_468_224,
    "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496, "llama-3.1-405b": 405_853_388_800,
    "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824, "llama-3.3-70b": 70_553_706_496,
    "smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120, "smollm2-1.7b": 1_711_376_384,
    "qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-7b": 7_615_616_512,
    "qwen3-0.6b": 596_049_920, "qwen3-8b": 8_190_735_360, "gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896,
    "gemma-2-2b": 2_614_341_888, "gemma-2-9b": 9_241_705_984, "gemma-2-27b": 27_227_128_320,
    "gemma-3-270m": 268_098_176, "gemma-3-1b": 999_885_952,
    "phi-3-mini": 3_821_079_552, "bloom-560m": 559_214_592, "bloom-7b1": 7_069_016_064,
    "bloom-176b": 176_247_271_424, "olmo-2-7b": 7_298_617_344,
    # encoder-only (BertModel with pooler) and encoder-decoder (T5ForConditionalGeneration)
    "bert-base": 109_482_240, "bert-large": 335_141_888, "t5-small": 60_506_624, "t5-base": 222_903_552,
    "t5-v1_1-small": 76_961_152,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_meta_device_counts_equal_published(name):
    model = meta_model(gu.Config.preset(name))
    assert next(model.parameters()).is_meta
    assert model.num_params() == PUBLISHED[name]


def test_mixtral_active_parameters():
    cfg = gu.Config.preset("mixtral-8x7b")
    assert meta_model(cfg).num_params(active=True) == 12_879_925_248
    assert calc.active_param_count(cfg) == 12_879_925_248


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_formula_equals_built_model(name):
    cfg = gu.Config.preset(name)
    model = meta_model(cfg)
    b = calc.param_breakdown(cfg)
    assert b["total"] == model.num_params()
    assert b["active"] == model.num_params(active=True)
    assert b["total"] == b["embeddings"] + b["attention"] + b["ffn"] + b["norms"] + b["head"]


def test_gemma2_windowed_layers_cap_half_the_kv_cache():
    """Gemma 2 2B: 26 layers x 4 kv heads x 256 dims x 2 (K, V) x 2 bytes = 104 KiB a token; the 13 local layers
    stop at their 4,096-token window, so at 8,192 tokens the cache is 3/4 of a full one."""
    cfg = gu.Config.preset("gemma-2-2b")
    per_layer = 2 * 4 * 256 * 2
    assert calc.kv_cache_bytes_per_token(cfg) == 26 * per_layer == 104 * 1024
    assert calc.windowed_layers(cfg) == 13
    assert calc.kv_cache_bytes(cfg, 1, 8192) == 13 * per_layer * 8192 + 13 * per_layer * 4096
    assert calc.kv_cache_bytes(cfg, 2, 1000) == 2 * 1000 * 26 * per_layer  # under the window: every layer grows
    assert "13 windowed layers" in calc.report(cfg)
    # Gemma 3 1B: 22 of 26 layers are local with a 512 window
    g3 = gu.Config.preset("gemma-3-1b")
    assert calc.windowed_layers(g3) == 22
    assert calc.kv_cache_bytes(g3, 1, 32768) == 4 * 2 * 256 * 2 * 32768 + 22 * 2 * 256 * 2 * 512


def test_course_kv_cache_figures():
    kib, mib = 1024, 1024**2
    assert calc.kv_cache_bytes_per_token(gu.Config.preset("llama-2-7b")) == 512 * kib
    assert calc.kv_cache_bytes_per_token(gu.Config.preset("llama-2-13b")) == 800 * kib
    l70 = gu.Config.preset("llama-2-70b")
    assert calc.kv_cache_bytes_per_token(l70.replace(n_kv_heads=64)) == 2.5 * mib
    assert calc.kv_cache_bytes_per_token(l70) == 320 * kib
    # the course's follow-ups for 70B under MHA: bs=1, n=512 -> 1.25 GiB; bs=16, n=4096 -> 160 GiB
    assert calc.kv_cache_bytes(l70.replace(n_kv_heads=64), 1, 512) == 1.25 * 1024**3
    assert calc.kv_cache_bytes(l70.replace(n_kv_heads=64), 16, 4096) == 160 * 1024**3


def test_sliding_window_caps_cache():
    cfg = gu.Config.preset("mistral-7b")
    assert calc.kv_cache_bytes(cfg, 1, 32768) == calc.kv_cache_bytes(cfg, 1, 4096)


@pytest.mark.parametrize("params, tokens, flops", [
    (400e6, "8.0B", "1.92e+19"), (1e9, "20.2B", "1.21e+20"), (10e9, "205.1B", "1.23e+22"),
])
def test_chinchilla_table_rows(params, tokens, flops):
    out = calc.chinchilla(params)
    assert f"{out['tokens'] / 1e9:.1f}B" == tokens
    assert f"{out['flops']:.2e}" == flops


def test_chinchilla_is_monotone_and_about_20_tokens_per_param():
    sizes = [1e7, 1e8, 4e8, 7e8, 3e9, 5e10, 2e11, 5e12, 3e13]
    tokens = [calc.chinchilla_tokens(n) for n in sizes]
    assert tokens == sorted(tokens)
    assert all(18 < t / n < 23 for t, n in zip(tokens, sizes, strict=True))


def test_training_flops_are_about_6n():
    cfg = gu.Config.preset("llama-2-7b")
    n = calc.param_count(cfg)
    per_token = calc.flops_per_token(cfg, 4096, training=True)
    assert per_token == 3 * calc.flops_per_token(cfg, 4096)
    # 6 x (N minus the input embedding, a lookup) plus the attention term 6 * L * T * d (Kaplan et al., 2020)
    attention = 6 * 32 * 4096 * 4096
    lookup = 32000 * 4096
    assert per_token - attention == pytest.approx(6 * (n - lookup), rel=1e-4)
    assert per_token - attention == pytest.approx(6 * n, rel=0.03)


def test_serving_memory_and_lora_count():
    cfg = gu.Config.preset("llama-2-7b")
    mem = calc.serving_memory(cfg, batch=1, seq_len=4096, dtype="float16")
    assert mem["weights"] == 2 * 6_738_415_616 and mem["kv_cache"] == 2 * 1024**3
    # LoRA r=8 on q and v: 32 layers x 2 x 8 x (4096 + 4096) = 4,194,304 (the LoRA paper's 7B figure)
    assert calc.lora_param_count(cfg, r=8, targets=("q_proj", "v_proj")) == 4_194_304
    with pytest.raises(ValueError, match="LoRA target 'qkv'"):
        calc.lora_param_count(cfg, targets=("qkv",))


def test_course_embedding_exercise():
    """V = 30000, d = 768, 512 learned positions, no bias: the course's embedding and per-layer figures."""
    cfg = gu.Config(arch="encoder", vocab_size=30000, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                    max_seq_len=512, attn_bias=False, attn_out_bias=False, mlp_bias=False, norm_placement="post",
                    final_norm=False)
    b = calc.param_breakdown(cfg)
    assert b["embeddings"] == 23_433_216
    assert calc.attention_params(cfg) == 4 * 768 * 64 * 12 == 2_359_296
    assert calc.ffn_params(cfg) == 2 * 768 * 3072 == 4_718_592
    # "Total = 12 (attention + layer norm + ff)", with the course's 768 x 2 per layer norm (two per layer)
    assert b["attention"] + b["ffn"] + b["norms"] == 12 * (2_359_296 + 2 * 768 * 2 + 4_718_592)
    report = calc.report(cfg)
    assert "23,433,216" in report and "2,359,296" in report and "4,718,592" in report


def test_transformer_base_is_explained():
    """The original Transformer: parts add up, cross-attention doubles decoder attention, no head (tied)."""
    cfg = gu.Config.preset("transformer-base")
    b = calc.param_breakdown(cfg)
    attn = calc.attention_params(cfg)
    assert attn == 4 * (512 * 512 + 512)
    assert b["attention"] == 6 * attn + 6 * 2 * attn
    assert b["ffn"] == 12 * (2 * 512 * 2048 + 2048 + 512)
    assert b["embeddings"] == 37000 * 512 and b["head"] == 0  # sinusoidal positions have no parameters
    assert b["norms"] == (6 * 2 + 6 * 3) * 2 * 512  # post-norm: one per sub-layer, no final norm
    assert 60e6 < b["total"] < 66e6  # the paper's Table 3 says 65M for the base model


def test_seq2seq_kv_cache_counts_decoder_layers():
    cfg = gu.Config.preset("t5-small")
    assert calc.kv_cache_bytes_per_token(cfg, "float32") == 2 * 6 * 8 * 64 * 4
    assert calc.kv_cache_bytes_per_token(gu.Config.preset("bert-base")) == 0
