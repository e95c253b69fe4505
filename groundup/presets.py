"""Named architectures as plain data: preset name -> Config keyword arguments.

Families are presets, not classes. The numbers come from each model's paper or released config.json;
tests check that a model built from each preset (on the meta device) has the published parameter count.
"""

from __future__ import annotations

from typing import Any

_GPT2: dict[str, Any] = dict(
    family="gpt2", vocab_size=50257, max_seq_len=1024, pos="learned", ffn="gelu_tanh",
    norm="layernorm", norm_eps=1e-5, tie_embeddings=True,
)
_OPT: dict[str, Any] = dict(
    family="opt", vocab_size=50272, max_seq_len=2048, pos="learned", pos_offset=2, pos_from_mask=True, ffn="relu",
    norm="layernorm", tie_embeddings=True,
)
_LLAMA: dict[str, Any] = dict(
    family="llama", vocab_size=32000, max_seq_len=4096, pos="rope", ffn="swiglu", norm="rmsnorm",
    norm_eps=1e-5, attn_bias=False, attn_out_bias=False, mlp_bias=False, tie_embeddings=False,
)
_LLAMA3: dict[str, Any] = dict(
    _LLAMA, vocab_size=128256, max_seq_len=131072, rope_theta=500000.0, rope_scaling="llama3",
    rope_scaling_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_seq_len=8192,
)
_GEMMA: dict[str, Any] = dict(
    _LLAMA, family="gemma", vocab_size=256000, max_seq_len=8192, ffn="geglu_tanh", norm_eps=1e-6,
    norm_weight_offset=1.0, embed_scale="sqrt_d", embed_scale_rounded=True, tie_embeddings=True, head_dim=256,
)


def every_kth_global(n_layers: int, k: int) -> list[str]:
    """Gemma's layer pattern (Config.layer_types): every k-th layer global, the others local (sliding window)."""
    return ["global" if (i + 1) % k == 0 else "local" for i in range(n_layers)]


# Gemma 2 (Gemma team, 2024b): sandwich norms, soft-capped scores (50) and logits (30), local (4,096 window)
# and global layers alternating, scores scaled by query_pre_attn_scalar^-0.5
_GEMMA2: dict[str, Any] = dict(_GEMMA, family="gemma2", norm_placement="sandwich", sliding_window=4096,
                               attn_softcap=50.0, logit_softcap=30.0, attn_scale_dim=256.0)
# Gemma 3 text (Gemma team, 2025): q/k head norms, five local layers (512 window, RoPE base 10k) to one global
_GEMMA3: dict[str, Any] = dict(_GEMMA, family="gemma3_text", vocab_size=262144, norm_placement="sandwich",
                               qk_norm="head", sliding_window=512, rope_theta=1e6, rope_local_theta=1e4,
                               attn_scale_dim=256.0, max_seq_len=32768)
_BLOOM: dict[str, Any] = dict(
    family="bloom", vocab_size=250880, max_seq_len=2048, pos="alibi", ffn="gelu_tanh", norm="layernorm",
    embed_norm=True, tie_embeddings=True,
)
_QWEN2: dict[str, Any] = dict(
    _LLAMA, family="qwen2", vocab_size=151936, max_seq_len=32768, rope_theta=1e6, norm_eps=1e-6, attn_bias=True,
    attn_out_bias=False,
)
_MISTRAL: dict[str, Any] = dict(
    _LLAMA, family="mistral", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
    max_seq_len=32768, sliding_window=4096,
)

# BERT (Devlin et al., 2019): post-norm encoder, learned positions, segment embeddings, embedding LayerNorm.
# The presets are BertModel with its pooler (the published counts); add mlm_head/nsp_head for pre-training.
_BERT: dict[str, Any] = dict(
    arch="encoder", family="bert", vocab_size=30522, max_seq_len=512, pos="learned", ffn="gelu",
    norm="layernorm", norm_eps=1e-12, norm_placement="post", final_norm=False, type_vocab_size=2,
    embed_norm=True, pooler=True, tie_embeddings=True,
)
# T5 (Raffel et al., 2020): pre-norm RMS-style norm without bias, relative position buckets shared per
# stack, no biases, unscaled attention scores, tied head fed d_model^-0.5-scaled states (v1.0).
_T5: dict[str, Any] = dict(
    arch="seq2seq", family="t5", vocab_size=32128, max_seq_len=512, pos="relative", rel_buckets=32,
    rel_max_distance=128, ffn="relu", norm="rmsnorm", norm_eps=1e-6, attn_bias=False, attn_out_bias=False,
    mlp_bias=False, attn_scale="none", tie_embeddings=True, lm_head_scale="inv_sqrt_d",
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
# The original Transformer (Vaswani et al., 2017) and Marian NMT: post-norm encoder-decoder with sinusoidal
# positions and sqrt(d_model)-scaled embeddings shared by encoder, decoder and output projection.
_WHISPER: dict[str, Any] = dict(
    arch="seq2seq", family="whisper", vocab_size=51865, n_mels=80, encoder_max_seq_len=1500, max_seq_len=448,
    pos="learned", ffn="gelu", norm="layernorm", norm_eps=1e-5, norm_placement="pre", key_bias=False,
    lm_head_bias=False, tie_embeddings=True, decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257,
    bos_token_id=50257,
)
_TRANSFORMER: dict[str, Any] = dict(
    arch="seq2seq", family="marian", d_model=512, n_layers=6, n_decoder_layers=6, n_heads=8, d_ff=2048,
    max_seq_len=512, pos="sinusoidal", ffn="relu", norm="layernorm", norm_placement="post", final_norm=False,
    embed_scale="sqrt_d", tie_embeddings=True,
)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 (Radford et al., 2019) and GPT-3 175B (Brown et al., 2020; dense attention assumed)
    "gpt2": dict(_GPT2, d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(_GPT2, d_model=1024, n_layers=24, n_heads=16),
    "gpt2-large": dict(_GPT2, d_model=1280, n_layers=36, n_heads=20),
    "gpt2-xl": dict(_GPT2, d_model=1600, n_layers=48, n_heads=25),
    "gpt3-175b": dict(_GPT2, d_model=12288, n_layers=96, n_heads=96, max_seq_len=2048),
    # OPT (Zhang et al., 2022)
    "opt-125m": dict(_OPT, d_model=768, n_layers=12, n_heads=12),
    "opt-175b": dict(_OPT, d_model=12288, n_layers=96, n_heads=96),
    # GPT-NeoX / Pythia (Biderman et al., 2023); Dolly v2 12B is a fine-tuned pythia-12b
    "pythia-12b": dict(
        family="gpt_neox", vocab_size=50688, d_model=5120, n_layers=36, n_heads=40, max_seq_len=2048,
        pos="rope", rotary_fraction=0.25, ffn="gelu", residual="parallel", tie_embeddings=False,
    ),
    # Falcon-7B (Almazrouei et al., 2023): multi-query, parallel attention+MLP with one shared norm
    "falcon-7b": dict(
        family="falcon", vocab_size=65024, d_model=4544, n_layers=32, n_heads=71, n_kv_heads=1,
        max_seq_len=2048, pos="rope", ffn="gelu", residual="parallel", shared_norm=True,
        attn_bias=False, attn_out_bias=False, mlp_bias=False, tie_embeddings=True,
    ),
    # MPT-7B (MosaicML, 2023): ALiBi, no biases anywhere, not even in LayerNorm
    "mpt-7b": dict(
        family="mpt", vocab_size=50432, d_model=4096, n_layers=32, n_heads=32, max_seq_len=2048,
        pos="alibi", ffn="gelu", norm_bias=False, attn_bias=False, attn_out_bias=False, mlp_bias=False,
        tie_embeddings=True,
    ),
    # Llama 2 (Touvron et al., 2023) and Llama 3
    "llama-2-7b": dict(_LLAMA, d_model=4096, n_layers=32, n_heads=32, d_ff=11008),
    "llama-2-13b": dict(_LLAMA, d_model=5120, n_layers=40, n_heads=40, d_ff=13824),
    "llama-2-70b": dict(_LLAMA, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672),
    "llama-3-8b": dict(
        _LLAMA, vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
        max_seq_len=8192, rope_theta=500000.0,
    ),
    # Llama 3.1 (Meta, 2024): 128k context through llama3 RoPE scaling of the 8k pre-training context; Llama 3.2
    # 1B/3B tie their embeddings
    "llama-3.1-8b": dict(_LLAMA3, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336),
    "llama-3.1-70b": dict(_LLAMA3, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672),
    "llama-3.1-405b": dict(_LLAMA3, d_model=16384, n_layers=126, n_heads=128, n_kv_heads=8, d_ff=53248),
    "llama-3.2-1b": dict(_LLAMA3, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                         tie_embeddings=True, rope_scaling_factor=32.0),
    "llama-3.2-3b": dict(_LLAMA3, d_model=3072, n_layers=28, n_heads=24, n_kv_heads=8, d_ff=8192,
                         tie_embeddings=True, rope_scaling_factor=32.0),
    # Llama 3.3 70B: the 3.1 70B architecture, retrained
    "llama-3.3-70b": dict(_LLAMA3, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672),
    # SmolLM2 (Allal et al., 2025): small Llamas with a 49k vocabulary and tied embeddings
    "smollm2-135m": dict(_LLAMA, vocab_size=49152, max_seq_len=8192, rope_theta=100000.0, tie_embeddings=True,
                         d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536),
    "smollm2-360m": dict(_LLAMA, vocab_size=49152, max_seq_len=8192, rope_theta=100000.0, tie_embeddings=True,
                         d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, d_ff=2560),
    "smollm2-1.7b": dict(_LLAMA, vocab_size=49152, max_seq_len=8192, rope_theta=130000.0, tie_embeddings=True,
                         d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32, d_ff=8192),
    # Gemma (Gemma team, 2024): 256k vocabulary, head_dim 256, MQA in the 2B
    "gemma-2b": dict(_GEMMA, d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, d_ff=16384),
    "gemma-7b": dict(_GEMMA, d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, d_ff=24576),
    "gemma-2-2b": dict(_GEMMA2, d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, d_ff=9216,
                       layer_types=every_kth_global(26, 2)),
    "gemma-2-9b": dict(_GEMMA2, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, d_ff=14336,
                       layer_types=every_kth_global(42, 2)),
    "gemma-2-27b": dict(_GEMMA2, d_model=4608, n_layers=46, n_heads=32, n_kv_heads=16, head_dim=128, d_ff=36864,
                        attn_scale_dim=144.0, layer_types=every_kth_global(46, 2)),
    "gemma-3-270m": dict(_GEMMA3, d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, d_ff=2048,
                         layer_types=every_kth_global(18, 6)),
    "gemma-3-1b": dict(_GEMMA3, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1, d_ff=6912,
                       layer_types=every_kth_global(26, 6)),
    # Phi-3-mini (Abdin et al., 2024): fused qkv_proj / gate_up_proj in its checkpoints, a 2047-token window
    "phi-3-mini": dict(_LLAMA, family="phi3", vocab_size=32064, d_model=3072, n_layers=32, n_heads=32, d_ff=8192,
                       sliding_window=2047),
    # BLOOM (BigScience, 2022): ALiBi, embedding LayerNorm, 250k vocabulary, tied head
    "bloom-560m": dict(_BLOOM, d_model=1024, n_layers=24, n_heads=16),
    "bloom-7b1": dict(_BLOOM, d_model=4096, n_layers=30, n_heads=32),
    "bloom-176b": dict(_BLOOM, d_model=14336, n_layers=70, n_heads=112),
    # OLMo 2 (OLMo team, 2024): norms on the sublayer outputs, q/k norm over whole projections
    "olmo-2-7b": dict(_LLAMA, family="olmo2", vocab_size=100352, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                      rope_theta=500000.0, norm_eps=1e-6, norm_placement="sublayer", qk_norm="full"),
    # Qwen2.5 (Qwen team, 2024): biased q/k/v; the small ones tie their embeddings. Qwen3 (2025): q/k norm.
    "qwen2.5-0.5b": dict(_QWEN2, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, d_ff=4864,
                         tie_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN2, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, d_ff=8960,
                         tie_embeddings=True),
    "qwen2.5-7b": dict(_QWEN2, vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, d_ff=18944),
    "qwen3-0.6b": dict(_QWEN2, family="qwen3", attn_bias=False, qk_norm="head", d_model=1024, n_layers=28,
                       n_heads=16, n_kv_heads=8, head_dim=128, d_ff=3072, max_seq_len=40960, tie_embeddings=True),
    "qwen3-8b": dict(_QWEN2, family="qwen3", attn_bias=False, qk_norm="head", d_model=4096, n_layers=36,
                     n_heads=32, n_kv_heads=8, head_dim=128, d_ff=12288, max_seq_len=40960),
    # Mistral 7B (Jiang et al., 2023) and Mixtral 8x7B (Jiang et al., 2024)
    "mistral-7b": dict(_MISTRAL),
    "mixtral-8x7b": dict(
        _MISTRAL, family="mixtral", sliding_window=None, rope_theta=1e6, n_experts=8, top_k=2,
        router="topk_softmax", router_aux_loss_coef=0.02,
    ),
    # Qwen1.5-MoE-A2.7B (Qwen2-MoE): 60 fine-grained experts top-4 (not renormalised) plus a sigmoid-gated shared
    # expert four experts wide; 14.3B parameters, 2.7B active
    "qwen1.5-moe-a2.7b": dict(_QWEN2, family="qwen2_moe", vocab_size=151936, d_model=2048, n_layers=24, n_heads=16,
                              d_ff=5632, max_seq_len=8192, n_experts=60, top_k=4, router="softmax_topk",
                              router_aux_loss_coef=0.001, expert_d_ff=1408, shared_expert_d_ff=5632,
                              shared_expert_gate=True),
    # Qwen3-30B-A3B: 128 experts top-8, renormalised, no shared expert
    "qwen3-30b-a3b": dict(_QWEN2, family="qwen3_moe", attn_bias=False, qk_norm="head", d_model=2048, n_layers=48,
                          n_heads=32, n_kv_heads=4, head_dim=128, d_ff=6144, max_seq_len=40960, n_experts=128,
                          top_k=8, router="topk_softmax", router_aux_loss_coef=0.001, expert_d_ff=768),
    # OLMoE-1B-7B (Muennighoff et al., 2024): 64 experts top-8 in every layer; 6.9B parameters, 1.3B active
    "olmoe-1b-7b": dict(_LLAMA, family="olmoe", vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=1024,
                        max_seq_len=4096, norm_eps=1e-5, qk_norm="full", n_experts=64, top_k=8,
                        router="softmax_topk", router_aux_loss_coef=0.01),
    # Switch-Base-8 (Fedus et al., 2021): T5-Base with every other FFN a top-1 Switch layer of 8 experts, 64 token
    # slots per expert and sequence, router z-loss (ST-MoE)
    "switch-base-8": dict(_T5, family="switch_transformers", d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                          n_experts=8, top_k=1, router="switch", router_group="sequence", expert_capacity=64,
                          router_jitter=0.01, router_aux_loss_coef=0.001, router_z_loss_coef=0.001,
                          moe_layers=[i for i in range(24) if i % 2 == 1]),
    # A ~125M Llama-style GQA model (the benchmark's second config)
    "llama-125m": dict(_LLAMA, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048,
                       max_seq_len=2048),
    # encoder-only and encoder-decoder families
    "bert-base": dict(_BERT, d_model=768, n_layers=12, n_heads=12),
    "bert-large": dict(_BERT, d_model=1024, n_layers=24, n_heads=16),
    "t5-small": dict(_T5, d_model=512, n_layers=6, n_heads=8, d_ff=2048),
    "t5-base": dict(_T5, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    # T5 v1.1: gated-GELU FFN (tanh approximation), untied head without the rescale
    "t5-v1_1-small": dict(_T5, d_model=512, n_layers=8, n_heads=6, head_dim=64, d_ff=1024, ffn="geglu_tanh",
                          tie_embeddings=False, lm_head_scale="none"),
    # "Attention Is All You Need", base model: shared 37000-token BPE vocabulary (WMT'14 EN-DE)
    "transformer-base": dict(_TRANSFORMER, vocab_size=37000),
    # Helsinki-NLP opus-mt-en-de (Marian): SiLU FFN, split sin|cos table, a bias on the output logits
    "opus-mt-en-de": dict(_TRANSFORMER, vocab_size=58101, ffn="silu", sinusoidal_layout="split", lm_head_bias=True,
                          pad_token_id=58100, eos_token_id=0, decoder_start_token_id=58100),
    # Whisper (Radford et al., 2022): an audio encoder (80 log-mel bins, 128 for large-v3; 1500 positions) and a text
    # decoder (448 positions) over a 51,865-id byte-level BPE (51,866 for large-v3), tied head, no key bias
    "whisper-tiny": dict(_WHISPER, d_model=384, n_layers=4, n_heads=6, d_ff=1536),
    "whisper-base": dict(_WHISPER, d_model=512, n_layers=6, n_heads=8, d_ff=2048),
    "whisper-small": dict(_WHISPER, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "whisper-medium": dict(_WHISPER, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "whisper-large-v3": dict(_WHISPER, d_model=1280, n_layers=32, n_heads=20, d_ff=5120, vocab_size=51866, n_mels=128,
                             decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50256),
    # tiny presets for tests and demos
    "tiny-gpt2": dict(_GPT2, vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    "tiny-llama": dict(_LLAMA, vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                       max_seq_len=128),
    "tiny-mistral": dict(_MISTRAL, vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=128, max_seq_len=128, sliding_window=16),
    "tiny-mixtral": dict(_MISTRAL, family="mixtral", vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                         n_kv_heads=2, d_ff=96, max_seq_len=128, sliding_window=None, n_experts=4, top_k=2),
    # a Switch decoder (no transformers layout holds one: saved in groundup's own): top-1 with capacity factor
    # 1.25 in training and 2.0 in eval, layer 1 of 2 MoE, router z-loss
    "tiny-switch": dict(_LLAMA, family="groundup", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        d_ff=128, max_seq_len=128, n_experts=8, top_k=1, router="switch", capacity_factor=1.25,
                        eval_capacity_factor=2.0, router_z_loss_coef=0.001, moe_layers=[1]),
    "tiny-bert": dict(_BERT, vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=128, mlm_head=True,
                      nsp_head=True),
    "tiny-t5": dict(_T5, vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, rel_buckets=8,
                    rel_max_distance=32),
    "tiny-transformer": dict(_TRANSFORMER, vocab_size=256, d_model=64, n_layers=2, n_decoder_layers=2, n_heads=4,
                             d_ff=128, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0),
}
