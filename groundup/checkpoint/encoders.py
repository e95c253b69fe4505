"""HF layouts of the encoder-only (BERT) and encoder-decoder (T5, Marian) families.

Same shape of data as decoders.py: config.json <-> Config, and (groundup module, HF module) name
templates. BERT's heads follow the checkpoint's architecture (BertForPreTraining has the pooler, MLM and
NSP heads; BertModel has no ``bert.`` prefix); T5 keeps one relative-bias table per stack in layer 0;
Marian stores its output bias as a [1, V] buffer named ``final_logits_bias``.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from .layout import Family, UnsupportedConfig, activation_from_hf, activation_to_hf, first_of, require

# BERT ---------------------------------------------------------------------------------------------
# architecture -> (pooler, mlm_head, nsp_head, classifier)
_BERT_HEADS = {"BertForPreTraining": (True, True, True, False), "BertForMaskedLM": (False, True, False, False),
               "BertForNextSentencePrediction": (True, False, True, False),
               "BertForSequenceClassification": (True, False, False, True), "BertModel": (True, False, False, False)}


def _bert_config(hf: dict[str, Any]) -> dict[str, Any]:
    arch = (hf.get("architectures") or ["BertModel"])[0]
    require(arch in _BERT_HEADS, f"architecture {arch!r} is not supported; supported: {', '.join(_BERT_HEADS)}")
    require(hf.get("position_embedding_type", "absolute") == "absolute",
             f"position_embedding_type={hf.get('position_embedding_type')!r} is not supported (absolute only)")
    require(not hf.get("is_decoder") and not hf.get("add_cross_attention"), "BERT as a decoder is not supported")
    pooler, mlm, nsp, cls = _BERT_HEADS[arch]
    labels = len(hf.get("id2label") or {}) or hf.get("num_labels") or 2
    return dict(arch="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                max_seq_len=hf["max_position_embeddings"], pos="learned",
                ffn=activation_from_hf(hf.get("hidden_act", "gelu"), "hidden_act"), norm="layernorm",
                norm_eps=hf.get("layer_norm_eps", 1e-12), norm_placement="post", final_norm=False,
                type_vocab_size=hf.get("type_vocab_size", 2), embed_norm=True, pooler=pooler, mlm_head=mlm,
                nsp_head=nsp, num_labels=labels if cls else 0, tie_embeddings=hf.get("tie_word_embeddings", True),
                dropout=hf.get("hidden_dropout_prob", 0.0), attn_dropout=hf.get("attention_probs_dropout_prob", 0.0))


def _bert_arch(cfg: Config) -> str:
    heads = (cfg.heads.pooler, cfg.heads.mlm_head, cfg.heads.nsp_head, bool(cfg.heads.num_labels))
    for arch, layout in _BERT_HEADS.items():
        if layout == heads:
            return arch
    choices = "; ".join(f"{a} (pooler, mlm_head, nsp_head, classifier) = {h}" for a, h in _BERT_HEADS.items())
    raise UnsupportedConfig(f"BERT layout has no architecture with (pooler, mlm_head, nsp_head, classifier) = "
                            f"{heads}; use one of: {choices}")


def _bert_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "learned" and cfg.norm == "layernorm" and cfg.norm_placement == "post" and cfg.embed_norm
             and cfg.attn_bias and cfg.attn_out_bias and cfg.mlp_bias and cfg.norm_bias and not cfg.gated
             and cfg.n_kv_heads == cfg.n_heads and cfg.pos_offset == 0 and not cfg.final_norm,
             "BERT layout needs learned positions, post-norm LayerNorm with biases, an embedding norm, "
             "biases everywhere, a plain FFN and multi-head attention")
    out = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len, hidden_act=activation_to_hf(cfg),
               layer_norm_eps=cfg.norm_eps, type_vocab_size=cfg.heads.type_vocab_size, hidden_dropout_prob=cfg.dropout,
               attention_probs_dropout_prob=cfg.attn_dropout, position_embedding_type="absolute")
    if cfg.heads.num_labels:
        names = cfg.extra.get("id2label") or {}
        if len(names) != cfg.heads.num_labels:
            names = {str(i): f"LABEL_{i}" for i in range(cfg.heads.num_labels)}
        out.update(id2label=names, label2id={v: int(k) for k, v in names.items()})
    return out


def _bert_keys(cfg: Config) -> list[tuple[str, str]]:
    p = "" if _bert_arch(cfg) == "BertModel" else "bert."
    h = p + "encoder.layer.{i}."
    keys = [("embed", p + "embeddings.word_embeddings"), ("pos_embed", p + "embeddings.position_embeddings"),
            ("type_embed", p + "embeddings.token_type_embeddings"), ("embed_norm", p + "embeddings.LayerNorm"),
            ("blocks.{i}.attn.q_proj", h + "attention.self.query"),
            ("blocks.{i}.attn.k_proj", h + "attention.self.key"),
            ("blocks.{i}.attn.v_proj", h + "attention.self.value"),
            ("blocks.{i}.attn.o_proj", h + "attention.output.dense"),
            ("blocks.{i}.attn_norm", h + "attention.output.LayerNorm"),
            ("blocks.{i}.mlp.up_proj", h + "intermediate.dense"),
            ("blocks.{i}.mlp.down_proj", h + "output.dense"), ("blocks.{i}.mlp_norm", h + "output.LayerNorm"),
            ("pooler.dense", p + "pooler.dense"), ("mlm_head.dense", "cls.predictions.transform.dense"),
            ("mlm_head.norm", "cls.predictions.transform.LayerNorm"), ("mlm_head.decoder", "cls.predictions.decoder"),
            ("nsp_head", "cls.seq_relationship"), ("classifier", "classifier")]
    return keys


# T5 -----------------------------------------------------------------------------------------------
_T5_FFN_FROM_HF = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gated-gelu": "geglu_tanh",
                   "gated-gelu_new": "geglu_tanh", "gated-silu": "swiglu", "gated-relu": "reglu"}
_T5_FFN_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "geglu_tanh": "gated-gelu",
                 "swiglu": "gated-silu", "reglu": "gated-relu"}


def _t5_config(hf: dict[str, Any]) -> dict[str, Any]:
    arch = (hf.get("architectures") or ["T5ForConditionalGeneration"])[0]
    require(arch == "T5ForConditionalGeneration", f"architecture {arch!r} is not supported "
             "(T5ForConditionalGeneration only)")
    ffn = hf.get("feed_forward_proj", "relu")
    require(ffn in _T5_FFN_FROM_HF, f"feed_forward_proj={ffn!r} is not supported; supported: "
             f"{', '.join(_T5_FFN_FROM_HF)}")
    tie = hf.get("tie_word_embeddings", True) is not False
    scale = first_of(hf, "scale_decoder_outputs", default=tie)
    return dict(arch="seq2seq", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["num_layers"],
                n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], n_heads=hf["num_heads"],
                head_dim=hf["d_kv"], d_ff=hf["d_ff"], max_seq_len=hf.get("n_positions", 512), pos="relative",
                rel_buckets=hf.get("relative_attention_num_buckets", 32),
                rel_max_distance=hf.get("relative_attention_max_distance", 128), ffn=_T5_FFN_FROM_HF[ffn],
                norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), attn_bias=False, attn_out_bias=False,
                mlp_bias=False, attn_scale="none", tie_embeddings=tie, lm_head_scale="inv_sqrt_d" if scale else "none",
                dropout=hf.get("dropout_rate", 0.0))


def _t5_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "relative" and cfg.norm == "rmsnorm" and cfg.norm_placement == "pre" and cfg.final_norm
             and not (cfg.attn_bias or cfg.attn_out_bias or cfg.mlp_bias or cfg.lm_head_bias)
             and cfg.attn_scale == "none" and cfg.embed_scale == "none" and cfg.n_kv_heads == cfg.n_heads,
             "T5 layout needs relative positions, pre-norm RMSNorm, no biases, unscaled scores and embeddings "
             "and multi-head attention")
    require(cfg.ffn in _T5_FFN_TO_HF, f"ffn={cfg.ffn!r} has no T5 feed_forward_proj; supported: "
             f"{', '.join(_T5_FFN_TO_HF)}")
    require(cfg.tie_embeddings or cfg.lm_head_scale == "none",
             "T5 layout rescales the decoder output only with a tied head: untied needs lm_head_scale='none'")
    return dict(d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff, num_layers=cfg.n_layers,
                num_decoder_layers=cfg.n_decoder_layers, num_heads=cfg.n_heads,
                relative_attention_num_buckets=cfg.score_bias.rel_buckets,
                relative_attention_max_distance=cfg.score_bias.rel_max_distance,
                layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=_T5_FFN_TO_HF[cfg.ffn], dropout_rate=cfg.dropout,
                scale_decoder_outputs=cfg.lm_head_scale == "inv_sqrt_d", is_encoder_decoder=True)


def _t5_keys(cfg: Config) -> list[tuple[str, str]]:
    keys = [("embed", "shared"), ("lm_head", "lm_head"),
            ("encoder.rel_bias", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
            ("decoder.rel_bias", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias")]
    ffn = [("gate_proj", "wi_0"), ("up_proj", "wi_1")] if cfg.gated else [("up_proj", "wi")]
    for stack in ("encoder", "decoder"):
        g, h = f"{stack}.blocks.{{i}}.", f"{stack}.block.{{i}}.layer."
        f = 2 if stack == "decoder" else 1  # index of the FFN sub-layer
        keys += [(g + f"attn.{p}_proj", h + f"0.SelfAttention.{p}") for p in "qkvo"]
        keys += [(g + "attn_norm", h + "0.layer_norm"), (g + "mlp_norm", h + f"{f}.layer_norm"),
                 (g + "mlp.down_proj", h + f"{f}.DenseReluDense.wo"), (f"{stack}.norm", f"{stack}.final_layer_norm")]
        keys += [(g + f"mlp.{a}", h + f"{f}.DenseReluDense.{b}") for a, b in ffn]
        if stack == "decoder":
            keys += [(g + f"cross_attn.{p}_proj", h + f"1.EncDecAttention.{p}") for p in "qkvo"]
            keys.append((g + "cross_attn_norm", h + "1.layer_norm"))
    return keys


# Marian -------------------------------------------------------------------------------------------
def _marian_config(hf: dict[str, Any]) -> dict[str, Any]:
    require(hf.get("share_encoder_decoder_embeddings", True), "share_encoder_decoder_embeddings=false is not "
             "supported (one embedding for source and target)")
    require(hf.get("decoder_vocab_size") in (None, hf["vocab_size"]), "decoder_vocab_size != vocab_size is not "
             "supported")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        require(hf.get(enc) == hf.get(dec), f"{enc}={hf.get(enc)} != {dec}={hf.get(dec)} is not supported")
    require(not hf.get("normalize_before", False), "normalize_before=true is not supported (Marian is post-norm)")
    return dict(arch="seq2seq", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["encoder_layers"],
                n_decoder_layers=hf["decoder_layers"], n_heads=hf["encoder_attention_heads"],
                d_ff=hf["encoder_ffn_dim"],
                max_seq_len=hf["max_position_embeddings"], pos="sinusoidal", sinusoidal_layout="split",
                ffn=activation_from_hf(hf.get("activation_function", "gelu"), "activation_function"), norm="layernorm",
                norm_eps=1e-5, norm_placement="post", final_norm=False,
                embed_scale="sqrt_d" if hf.get("scale_embedding") else "none", lm_head_bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("dropout", 0.0),
                attn_dropout=hf.get("attention_dropout", 0.0))


def _marian_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.pos == "sinusoidal" and cfg.sinusoidal_layout == "split" and cfg.norm == "layernorm"
             and cfg.norm_placement == "post" and not cfg.final_norm and cfg.norm_eps == 1e-5 and cfg.lm_head_bias
             and cfg.attn_bias and cfg.attn_out_bias and cfg.mlp_bias and cfg.norm_bias
             and cfg.attn_scale == "inv_sqrt_d" and cfg.lm_head_scale == "none" and cfg.n_kv_heads == cfg.n_heads,
             "Marian layout needs split sinusoidal positions, post-norm LayerNorm (eps 1e-5), biases everywhere "
             "including the output logits, and multi-head attention")
    return dict(d_model=cfg.d_model, encoder_layers=cfg.n_layers, decoder_layers=cfg.n_decoder_layers,
                encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.d_ff,
                decoder_ffn_dim=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
                activation_function=activation_to_hf(cfg),
                scale_embedding=cfg.embed_scale == "sqrt_d", share_encoder_decoder_embeddings=True,
                decoder_vocab_size=cfg.vocab_size, dropout=cfg.dropout, attention_dropout=cfg.attn_dropout,
                is_encoder_decoder=True)


def _bart_style_blocks() -> list[tuple[str, str]]:
    """The block names Marian and Whisper share (BART's): self_attn, encoder_attn, fc1/fc2 and their norms."""
    names = [("attn_norm", "self_attn_layer_norm"), ("mlp.up_proj", "fc1"), ("mlp.down_proj", "fc2"),
             ("mlp_norm", "final_layer_norm")]
    names += [(f"attn.{p}_proj", f"self_attn.{p}_proj") for p in "qkv"] + [("attn.o_proj", "self_attn.out_proj")]
    cross = [(f"cross_attn.{p}_proj", f"encoder_attn.{p}_proj") for p in "qkv"]
    cross += [("cross_attn.o_proj", "encoder_attn.out_proj"), ("cross_attn_norm", "encoder_attn_layer_norm")]
    keys = []
    for stack in ("encoder", "decoder"):
        pairs = names + (cross if stack == "decoder" else [])
        keys += [(f"{stack}.blocks.{{i}}.{a}", f"model.{stack}.layers.{{i}}.{b}") for a, b in pairs]
    return keys


def _marian_keys(cfg: Config) -> list[tuple[str, str]]:
    return [("embed", "model.shared"), ("lm_head", "lm_head"), *_bart_style_blocks()]


def _whisper_config(hf: dict[str, Any]) -> dict[str, Any]:
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        require(hf.get(enc) == hf.get(dec), f"{enc}={hf.get(enc)} != {dec}={hf.get(dec)} is not supported")
    require(not hf.get("scale_embedding", False), "scale_embedding=true is not supported for whisper")
    return dict(arch="seq2seq", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["encoder_layers"],
                n_decoder_layers=hf["decoder_layers"], n_heads=hf["encoder_attention_heads"],
                d_ff=hf["encoder_ffn_dim"], n_mels=hf.get("num_mel_bins", 80),
                encoder_max_seq_len=hf.get("max_source_positions", 1500),
                max_seq_len=hf.get("max_target_positions", 448), pos="learned",
                ffn=activation_from_hf(hf.get("activation_function", "gelu"), "activation_function"), norm="layernorm",
                norm_eps=1e-5, norm_placement="pre", final_norm=True, key_bias=False, lm_head_bias=False,
                tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("dropout", 0.0),
                attn_dropout=hf.get("attention_dropout", 0.0))


def _whisper_to_hf(cfg: Config) -> dict[str, Any]:
    require(cfg.n_mels > 0 and cfg.pos == "learned" and cfg.norm == "layernorm" and cfg.norm_placement == "pre"
            and cfg.final_norm and cfg.norm_eps == 1e-5 and not cfg.key_bias and cfg.attn_bias and cfg.attn_out_bias
            and cfg.mlp_bias and not cfg.lm_head_bias and cfg.n_kv_heads == cfg.n_heads and cfg.embed_scale == "none",
            "the Whisper layout needs an audio encoder (n_mels), learned positions, pre-norm LayerNorm (eps 1e-5), "
            "no key bias, biases elsewhere, no bias on the logits and multi-head attention")
    return dict(d_model=cfg.d_model, encoder_layers=cfg.n_layers, decoder_layers=cfg.n_decoder_layers,
                encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.d_ff,
                decoder_ffn_dim=cfg.d_ff, num_mel_bins=cfg.n_mels,
                max_source_positions=cfg.encoder_positions or 1500, max_target_positions=cfg.max_seq_len,
                activation_function=activation_to_hf(cfg), scale_embedding=False,
                dropout=cfg.dropout, attention_dropout=cfg.attn_dropout, is_encoder_decoder=True)


def _whisper_keys(cfg: Config) -> list[tuple[str, str]]:
    keys = [("embed", "model.decoder.embed_tokens"), ("lm_head", "proj_out"),
            ("audio_stem.conv1", "model.encoder.conv1"), ("audio_stem.conv2", "model.encoder.conv2")]
    for stack in ("encoder", "decoder"):
        keys += [(f"{stack}.pos_embed", f"model.{stack}.embed_positions"),
                 (f"{stack}.norm", f"model.{stack}.layer_norm")]
    return keys + _bart_style_blocks()


ENCODERS: dict[str, Family] = {
    "whisper": Family("whisper", "WhisperForConditionalGeneration", _whisper_config, _whisper_to_hf, _whisper_keys,
                      arch="seq2seq"),
    "bert": Family("bert", _bert_arch, _bert_config, _bert_to_hf, _bert_keys, arch="encoder",
                   exact=(("mlm_head.decoder.bias", "cls.predictions.bias"),),
                   ignored=(r"(bert\.)?embeddings\.position_ids",)),
    "t5": Family("t5", "T5ForConditionalGeneration", _t5_config, _t5_to_hf, _t5_keys, arch="seq2seq",
                 ignored=(r"(encoder|decoder)\.embed_tokens\.weight",
                          r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")),
    "marian": Family("marian", "MarianMTModel", _marian_config, _marian_to_hf, _marian_keys, arch="seq2seq",
                     exact=(("lm_head.bias", "final_logits_bias"),), row_vectors=("final_logits_bias",),
                     ignored=(r"model\.(encoder|decoder)\.(embed_tokens|embed_positions)\.weight",)),
}
