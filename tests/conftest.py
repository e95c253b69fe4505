"""Shared helpers: tiny random transformers models saved to disk, with every parameter randomised."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs the reference product paths, so a result never depends on which path a timing picked on the
# CI machine; every candidate path is tested against F.linear on its own, and the tuner itself is tested
# with autotune.enabled(True) (tests/nn/test_linear.py, tests/test_quant.py).
os.environ.setdefault("GROUNDUP_AUTOTUNE", "0")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 97


def portable_bitsandbytes() -> None:
    """Make bitsandbytes compute with its portable CPU path on a CPU with AVX-512, for the whole test process.

    Its AVX-512 CPU kernels (bitsandbytes 0.49-0.50, seen on an AVX-512 EPYC) disagree with its own format:
    dequantize_4bit is wrong whenever a block spans several rows (the tiny test models' 32-wide layers with
    64-element blocks), and Linear4bit repacks weights for a kernel that needs rows in multiples of 32. The
    portable path, the one every AVX2 machine runs, computes level[code] x absmax exactly as the format says,
    so the parity tests mean the same on every CPU. Nothing changes on a CPU without AVX-512."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return
    import warnings

    import bitsandbytes.nn.modules as modules
    from bitsandbytes.backends.default import ops as portable
    from bitsandbytes.backends.utils import _get_4bit_code

    def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
        A = A if A.dtype == torch.uint8 else A.view(torch.uint8)
        code = _get_4bit_code(quant_type, A.device)
        return portable._dequantize_4bit_compute(A.reshape(-1), absmax, code, blocksize, shape, dtype)

    modules.has_avx512bf16 = lambda: False
    with warnings.catch_warnings():  # torch warns once that a registered kernel is overridden: that is the point
        warnings.simplefilter("ignore")
        torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", dequantize_4bit)


def tiny_llama(seed: int = 0, **extra):
    """A tiny random groundup llama (eval mode) for adapter tests; ``extra`` overrides Config fields."""
    import groundup as gu

    torch.manual_seed(seed)
    fields = {**dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48), **extra}
    return gu.CausalLM(gu.Config.preset("tiny-llama").replace(**fields)).eval()


def adamw_steps(model: torch.nn.Module, ids: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> torch.optim.AdamW:
    """A few next-token AdamW steps on ``ids`` over the parameters that require grad; the model is left in
    eval mode. Returns the optimizer (its state shows what it trained)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return opt


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm weights and biases too), so a mis-mapped tensor cannot hide behind
    the ones/zeros of a default init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            else:
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.3)
    return model


def hf_configs() -> dict[str, object]:
    """One tiny transformers config per family and variant the parity tests cover."""
    import transformers as T

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama = dict(common, hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    return {
        "gpt2": T.GPT2Config(**common, n_positions=64, n_embd=32, n_layer=2, n_head=4),
        "opt": T.OPTConfig(**common, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, ffn_dim=48,
                           num_attention_heads=4, word_embed_proj_dim=32),
        "opt-postnorm": T.OPTConfig(**common, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                                    ffn_dim=48, num_attention_heads=4, word_embed_proj_dim=32,
                                    do_layer_norm_before=False),
        "gpt_neox": T.GPTNeoXConfig(**common, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                                    intermediate_size=48, num_attention_heads=4, rotary_pct=0.25),
        "gpt_neox-sequential": T.GPTNeoXConfig(**common, max_position_embeddings=64, hidden_size=32,
                                               num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
                                               rotary_pct=0.5, use_parallel_residual=False),
        "falcon": T.FalconConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 multi_query=True, parallel_attn=True, new_decoder_architecture=False),
        "falcon-gqa": T.FalconConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_kv_heads=2, new_decoder_architecture=True, bias=True),
        "mpt": T.MptConfig(**common, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
        "llama": T.LlamaConfig(**llama),
        "llama-tied-bias-linear": T.LlamaConfig(**llama, tie_word_embeddings=True, attention_bias=True,
                                                mlp_bias=True,
                                                rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                 "rope_theta": 10000.0}),
        # Llama 3.1's rope: head_dim 8 gives wavelengths 6.3 (blended), 63, 628, 6283 (scaled) for original 16
        "llama3-rope": T.LlamaConfig(**llama, rope_parameters={"rope_type": "llama3", "factor": 4.0,
                                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                               "original_max_position_embeddings": 16,
                                                               "rope_theta": 10000.0}),
        # dynamic NTK past an 8-token context: the base grows with the length (12 tokens in the parity tests)
        "llama-dynamic": T.LlamaConfig(**{**llama, "max_position_embeddings": 8},
                                       rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}),
        "mistral": T.MistralConfig(**llama, sliding_window=4),
        # Qwen2.5-0.5B ties its embeddings; Qwen3 normalises every q/k head and sets head_dim itself
        "qwen2": T.Qwen2Config(**llama, tie_word_embeddings=True),
        # Qwen2.5's long-context YaRN: ramped frequencies and cos/sin scaled by 0.1 ln(4) + 1
        "qwen2-yarn": T.Qwen2Config(**llama, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                              "original_max_position_embeddings": 16}),
        "gemma": T.GemmaConfig(**llama, head_dim=16),
        # Gemma 2: local (window 4) and global layers alternating, caps small enough to bind on random weights,
        # and a query scale (1/sqrt(12)) that is not head_dim's
        "gemma2": T.Gemma2Config(**{**llama, "num_hidden_layers": 4}, head_dim=16, sliding_window=4,
                                 query_pre_attn_scalar=12, attn_logit_softcapping=3.0, final_logit_softcapping=4.0),
        # Gemma 3 text: q/k head norms, a local base (10) apart from the global one (100, linearly scaled)
        "gemma3": T.Gemma3TextConfig(**{**llama, "num_hidden_layers": 4}, head_dim=16, sliding_window=4,
                                     query_pre_attn_scalar=16,
                                     layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                  "sliding_attention"],
                                     rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                         "rope_theta": 100.0},
                                                      "sliding_attention": {"rope_type": "default",
                                                                            "rope_theta": 10.0}}),
        "phi3": T.Phi3Config(**{**llama, "pad_token_id": 0}, sliding_window=5),
        # Phi-3.5's LongRoPE: short divisors up to 8 tokens, long ones past them, cos/sin x sqrt(1 + ln 8 / ln 8)
        "phi3-longrope": T.Phi3Config(**{**llama, "pad_token_id": 0}, original_max_position_embeddings=8,
                                      rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                       "short_factor": [1.0, 1.3, 1.7, 2.2],
                                                       "long_factor": [1.5, 3.0, 6.0, 12.0]}),
        "bloom": T.BloomConfig(**common, hidden_size=32, n_layer=2, n_head=4),
        "olmo2": T.Olmo2Config(**llama),
        "qwen3": T.Qwen3Config(**llama, head_dim=16),
        "mixtral": T.MixtralConfig(**llama, num_local_experts=4, num_experts_per_tok=2),
        # Qwen2-MoE: a dense first layer (mlp_only_layers), fine-grained experts, the sigmoid-gated shared expert
        "qwen2_moe": T.Qwen2MoeConfig(**llama, moe_intermediate_size=16, shared_expert_intermediate_size=40,
                                      num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0]),
        "qwen3_moe": T.Qwen3MoeConfig(**llama, head_dim=16, moe_intermediate_size=24, num_experts=4,
                                      num_experts_per_tok=2, norm_topk_prob=True),
        "olmoe": T.OlmoeConfig(**llama, num_experts=4, num_experts_per_tok=2),
    }


def _saved_models(tmp_path_factory: pytest.TempPathFactory, build, *, reload: bool):
    """make(name) -> (folder of the saved tiny model, the transformers model), built once per session.

    ``build(name)`` makes the model; every parameter is then randomised with a per-name seed. With
    ``reload`` the returned model is the one transformers loads back from the folder."""
    cache: dict[str, tuple[Path, torch.nn.Module]] = {}

    def make(name: str) -> tuple[Path, torch.nn.Module]:
        if name not in cache:
            torch.manual_seed(0)
            model = randomize_(build(name), seed=zlib.crc32(name.encode()) % 1000)
            if getattr(model.config, "tie_word_embeddings", False):
                model.tie_weights()
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            if name == "t5-v1_1":
                _untie_t5_head(path, seed=5)
            if reload:
                model = type(model).from_pretrained(path, attn_implementation="eager")
            cache[name] = (path, model.eval())
        return cache[name]

    return make


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory):
    """hf_folder(name) -> (path to a saved tiny random transformers decoder, the model itself)."""
    import transformers as T

    configs = hf_configs()
    return _saved_models(tmp_path_factory, lambda name: T.AutoModelForCausalLM.from_config(
        configs[name], attn_implementation="eager"), reload=False)


def hf_encdec_configs() -> dict[str, tuple[object, str]]:
    """Tiny encoder / encoder-decoder configs: name -> (transformers config, model class name)."""
    import transformers as T

    bert = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, pad_token_id=0)
    t5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=20, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
    marian = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                  pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, forced_eos_token_id=None)
    return {
        "bert-pretraining": (T.BertConfig(**bert), "BertForPreTraining"),
        "bert-classifier": (T.BertConfig(**bert, num_labels=3), "BertForSequenceClassification"),
        "bert-model": (T.BertConfig(**bert), "BertModel"),
        "bert-mlm": (T.BertConfig(**bert, hidden_act="relu"), "BertForMaskedLM"),
        "t5": (T.T5Config(**t5), "T5ForConditionalGeneration"),
        "t5-v1_1": (T.T5Config(**t5, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                    "T5ForConditionalGeneration"),
        "marian": (T.MarianConfig(**marian, scale_embedding=True, activation_function="swish"), "MarianMTModel"),
        # SwitchTransformers: layer 1 of each stack sparse (step 2, as switch-base-8; at step 1 transformers computes
        # no router loss for the stack), 4 experts with room for 2 tokens each per sequence: sequences drop tokens
        "switch": (T.SwitchTransformersConfig(**{**t5, "num_decoder_layers": 2}, num_experts=4, expert_capacity=2,
                                              num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
                                              router_z_loss_coef=0.001, router_aux_loss_coef=0.01),
                   "SwitchTransformersForConditionalGeneration"),
    }


def _untie_t5_head(path: Path, seed: int) -> None:
    """Turn a saved transformers-5 T5 v1.1 folder into the published v1.1 layout: a separate lm_head
    tensor and tie_word_embeddings=false in config.json."""
    import json

    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    tensors["lm_head.weight"] = torch.randn(tensors["shared.weight"].shape, generator=g) * 0.15
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def hf_encdec_folder(tmp_path_factory: pytest.TempPathFactory):
    """hf_encdec_folder(name) -> (path, the transformers model loaded back from that path)."""
    import transformers as T

    configs = hf_encdec_configs()

    def build(name: str) -> torch.nn.Module:
        config, cls_name = configs[name]
        return getattr(T, cls_name)(config)

    return _saved_models(tmp_path_factory, build, reload=True)


LORA_SPECS = [dict(r=2, alpha=4, target_modules=["q_proj", "v_proj"]),
              dict(r=4, alpha=4, target_modules=["v_proj", "down_proj"]),
              dict(r=3, alpha=9, target_modules=["o_proj", "up_proj", "q_proj"]),
              dict(r=1, alpha=2, target_modules=["k_proj", "gate_proj"])]


def lora_folders(factory, root, n: int, *, scale: float) -> list:
    """peft LoRA folders for the model ``factory()`` builds: the first n of LORA_SPECS (different ranks,
    scalings and target layers), A and B drawn at random times ``scale``."""
    from groundup.peft import apply_lora, lora_layers, save_adapter

    folders = []
    for i, spec in enumerate(LORA_SPECS[:n]):
        model = apply_lora(factory(), **spec)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * scale)
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * scale)
        folders.append(save_adapter(model, root / f"task{i}"))
    return folders
