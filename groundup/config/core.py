"""Config: every architecture switch of the three transformer families as one validated dataclass.

Every quirk is a named field with one Literal per choice; model code branches on these
fields, never on a model's name. Validation happens in ``__post_init__`` and raises ValueError naming
the field, its value and the rule, so a bad config fails before any weight is allocated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..presets import PRESETS
from .checks import check_literals
from .image import ImageConfig
from .moe import MoEConfig
from .parts import AudioConfig, HeadsConfig, ImplConfig, ScoreBiasConfig
from .rope import RoPEConfig

Arch = Literal["causal_lm", "encoder", "seq2seq", "vision"]
Pos = Literal["learned", "sinusoidal", "rope", "alibi", "relative", "none"]
SinusoidalLayout = Literal["interleaved", "split"]
Scale = Literal["none", "sqrt_d", "inv_sqrt_d"]
# quick_gelu: x sigmoid(1.702 x), the GELU approximation OpenAI's CLIP was trained with
Ffn = Literal["relu", "gelu", "gelu_tanh", "quick_gelu", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"]
Norm = Literal["layernorm", "rmsnorm"]
# sublayer: x + norm(f(x)) (OLMo 2); sandwich: x + norm_out(f(norm_in(x))) (Gemma 2/3)
NormPlacement = Literal["pre", "post", "sublayer", "sandwich"]
Residual = Literal["sequential", "parallel"]
QKNorm = Literal["none", "head", "full"]
LayerType = Literal["global", "local"]  # full causal attention, or the sliding window

GATED_FFNS = ("swiglu", "geglu", "geglu_tanh", "reglu")


@dataclass
class Config:
    """Architecture of a transformer language model.

    ``arch`` picks the family: ``causal_lm`` (decoder-only, CausalLM), ``encoder`` (encoder-only, BERT-style
    Encoder), ``seq2seq`` (encoder-decoder, Seq2Seq; ``n_layers`` encoder and ``n_decoder_layers`` decoder
    layers) or ``vision`` (an encoder over image patches, VisionEncoder: ViT and the image towers of CLIP,
    SigLIP and LLaVA; its ``max_seq_len`` is derived: patches plus the [CLS] token). Derived fields default
    when left None: ``n_kv_heads`` (MHA), ``head_dim`` (``d_model // n_heads``), ``d_ff`` (``4 * d_model``),
    ``n_decoder_layers`` (``n_layers``) and ``causal`` (True for causal_lm, False for encoder and vision; a
    seq2seq decoder is always causal and its encoder never is).
    """

    arch: Arch = "causal_lm"

    # sizes
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # n_heads: MHA; a divisor of n_heads: GQA; 1: MQA
    head_dim: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 1024
    n_decoder_layers: int | None = None  # seq2seq only
    audio: AudioConfig | None = None  # seq2seq over log-mel features (Whisper); None: token ids

    # positions
    pos: Pos = "learned"
    pos_offset: int = 0  # learned table rows before position 0 (OPT keeps 2)
    # without position_ids, count positions over the real tokens of attention_mask (padding at -1), as OPT does;
    # otherwise they are 0..T-1 after the cache, as in Llama
    pos_from_mask: bool = False
    rope: RoPEConfig = field(default_factory=RoPEConfig)  # pos='rope': base, partial rotary, context extension
    score_bias: ScoreBiasConfig = field(default_factory=ScoreBiasConfig)  # ALiBi slopes, T5 buckets
    sinusoidal_layout: SinusoidalLayout = "interleaved"  # sin/cos alternating (Vaswani) or halves (Marian)
    embed_scale: Scale = "none"  # sqrt_d: token embeddings x sqrt(d_model) (Vaswani et al. 3.4, Marian)
    embed_scale_rounded: bool = False  # the factor rounded to the weights' dtype first (Gemma: 33.94 -> 34 in bf16)

    # feed-forward
    ffn: Ffn = "gelu"

    # normalisation and residual wiring
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    norm_weight_offset: float = 0.0  # 1.0: RMSNorm scales by 1 + weight (Gemma stores the scale minus one)
    norm_placement: NormPlacement = "pre"
    residual: Residual = "sequential"  # parallel: x + attn(norm(x)) + mlp(norm(x)) (GPT-J/NeoX/Falcon)
    shared_norm: bool = False  # parallel residual with one norm feeding both branches (Falcon-7B)
    final_norm: bool = True

    # biases, embeddings, regularisation, masking
    attn_bias: bool = True  # q/k/v projections
    # k_proj's own bias (with attn_bias): Whisper has none; a key bias adds q.b to every score of a query alike, so
    # the softmax ignores it, and a layout without one loses nothing
    key_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    lm_head_bias: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    sliding_window: int | None = None  # each query sees at most this many keys, itself included
    # Per-layer attention pattern (Gemma 2: local/global alternating; Gemma 3: five local, one global): "local"
    # layers use sliding_window, "global" ones see every earlier key. None: every layer is local when
    # sliding_window is set (Mistral), else global.
    layer_types: list[LayerType] | None = None
    rope_local_theta: float | None = None  # local layers' RoPE base, unscaled (Gemma 3); None: rope.theta, as global
    # tanh soft-capping, cap * tanh(x / cap) (Gemma 2): of the scaled attention scores before the mask, and of
    # the final logits; None = off
    attn_softcap: float | None = None
    logit_softcap: float | None = None
    attn_scale_dim: float | None = None  # scores x attn_scale_dim^-0.5 instead of head_dim^-0.5 (query_pre_attn_scalar)
    causal: bool | None = None
    attn_scale: Scale = "inv_sqrt_d"  # scores x 1/sqrt(head_dim); T5 uses none (folded into its init)
    # head: an RMSNorm over head_dim on every query and key head (Qwen3); full: over the whole q and k
    # projections (OLMo 2); both before RoPE
    qk_norm: QKNorm = "none"
    lm_head_scale: Scale = "none"  # inv_sqrt_d: final hidden x d_model^-0.5 before a tied head (T5 v1.0)

    # what only some models have: encoders' heads, image towers, experts (each its own record); how models run
    embed_norm: bool = False  # a norm right after the embeddings (BERT; BLOOM's word_embeddings_layernorm)
    heads: HeadsConfig = field(default_factory=HeadsConfig)  # segments, pooler, MLM / NSP / classifier heads
    image: ImageConfig | None = None  # arch='vision': patches, [CLS], pooling (None for text models)
    cross_attention_dim: int | None = None  # the width cross-attention reads, when not d_model (BLIP-2's Q-Former)
    moe: MoEConfig | None = None  # routed experts in place of the dense FFN; None: dense
    impl: ImplConfig = field(default_factory=ImplConfig)  # attention kernel, flash tile, initialisation

    # special token ids (config.json's): generation stops at eos, pads with pad, and an encoder-decoder's
    # decoder starts from decoder_start_token_id; None = the model has none
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None

    # bookkeeping: which HF layout save_pretrained writes; model code never reads it
    family: str = "llama"
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # HF config fields carried through a round trip

    def __post_init__(self) -> None:
        check_literals(self)
        if self.causal is None:
            self.causal = self.arch not in ("encoder", "vision")
        if self.arch == "vision":
            self.image = self.image or ImageConfig()
            self._check_vision()
        elif self.image is not None:
            raise ValueError("image (patches, [CLS], pooling) needs arch='vision'")
        if self.n_decoder_layers is None and self.arch == "seq2seq":
            self.n_decoder_layers = self.n_layers
        self._check_arch()
        self._derive_sizes()
        self._check_positions()
        self._check_wiring()
        self._check_layer_types()
        for name in ("attn_softcap", "logit_softcap", "attn_scale_dim", "rope_local_theta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value!r} must be a positive number or None (off)")
        if self.moe is not None:
            causal = [i for i in range(self.n_stack_layers) if self.arch == "causal_lm" or i >= self.n_layers]
            self.moe.check_layers(self.n_stack_layers, causal, self.arch == "seq2seq")
        self._check_token_ids()

    def _derive_sizes(self) -> None:
        """n_kv_heads, head_dim and d_ff from their defaults, then every size checked."""
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.n_heads > 0 and self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "set head_dim explicitly or pick n_heads dividing d_model"
                )
            self.head_dim = self.d_model // max(self.n_heads, 1)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}: "
                "GQA needs each kv head shared by the same number of query heads"
            )

    def _check_positions(self) -> None:
        if self.pos == "rope":
            self.rope.check_dims(self.head_dim)
        if self.pos_offset < 0:
            raise ValueError(f"pos_offset={self.pos_offset} must be >= 0")
        if self.pos_from_mask and (self.pos != "learned" or self.pos_offset < 1):
            raise ValueError("pos_from_mask=True puts padding at position -1: it needs pos='learned' and "
                             "pos_offset >= 1")
        if self.pos == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even for pos='sinusoidal'")

    def _check_wiring(self) -> None:
        """Norms, residuals, dropout and windows."""
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be positive")
        if self.norm_weight_offset and self.norm != "rmsnorm":
            raise ValueError(f"norm_weight_offset={self.norm_weight_offset} needs norm='rmsnorm' (Gemma's 1 + weight)")
        if self.shared_norm and self.residual != "parallel":
            raise ValueError("shared_norm=True needs residual='parallel' (one norm feeding both branches)")
        if self.residual == "parallel" and self.norm_placement != "pre":
            raise ValueError("residual='parallel' needs norm_placement='pre'")
        if self.norm_placement == "sandwich" and self.arch == "seq2seq":
            raise ValueError("norm_placement='sandwich' (Gemma 2) has no cross-attention wiring; use it for "
                             "arch='causal_lm' or 'encoder'")
        for name in ("dropout", "attn_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name}={p} must be in [0, 1)")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be a positive integer or None")
        if self.sliding_window is not None and not self.causal:
            raise ValueError("sliding_window needs causal=True")

    def _check_vision(self) -> None:
        if self.pos != "learned" or self.causal:
            raise ValueError(f"arch='vision' takes learned positions over bidirectional attention (pos={self.pos!r}, "
                             f"causal={self.causal!r})")
        if self.heads.num_labels and not self.image.cls_token:
            raise ValueError("num_labels classifies the [CLS] token: it needs cls_token=True")
        self.max_seq_len = self.image_tokens  # derived: one learned position per patch, plus the [CLS]

    @property
    def image_tokens(self) -> int:
        """Tokens a vision encoder makes of an image at image_size: patches (+ [CLS]); 577 for ViT-L/14 at 336."""
        return self.image.tokens

    def value(self, name: str) -> Any:
        """A field by its own or its flat name (``rope_theta`` is ``rope.theta``, ``cls_token`` is
        ``image.cls_token``); None for a field of an absent record (``top_k`` of a dense model)."""
        if name in FLAT:
            kind, attr = FLAT[name]
            record = getattr(self, kind)
            return None if record is None else getattr(record, attr)
        return getattr(self, name)

    @property
    def encoder_positions(self) -> int | None:
        """An audio encoder's own position table length (Whisper: 1500), when not max_seq_len; else None."""
        return self.audio.encoder_max_seq_len if self.audio is not None else None

    @property
    def n_mels(self) -> int:
        """Log-mel bins an audio encoder reads; 0 for a model of token ids (``audio`` None)."""
        return self.audio.n_mels if self.audio is not None else 0

    @property
    def n_experts(self) -> int:
        """Routed experts per MoE layer; 0 for a dense model (``moe`` None)."""
        return self.moe.n_experts if self.moe is not None else 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether stack layer i (seq2seq: encoder layers, then decoder layers) has routed experts."""
        return self.moe is not None and (self.moe.moe_layers is None or i in self.moe.moe_layers)

    @property
    def moe_layer_count(self) -> int:
        """Number of MoE layers over all stacks."""
        return sum(self.is_moe_layer(i) for i in range(self.n_stack_layers))

    def _check_layer_types(self) -> None:
        kinds = self.layer_types
        if kinds is None:
            if self.rope_local_theta is not None:
                raise ValueError("rope_local_theta needs layer_types (which layers are local)")
            return
        if self.arch != "causal_lm":
            raise ValueError("layer_types (a per-layer attention pattern) is implemented for arch='causal_lm'")
        if not isinstance(kinds, list) or len(kinds) != self.n_layers:
            raise ValueError(f"layer_types must be a list of n_layers={self.n_layers} entries, got "
                             f"{len(kinds) if isinstance(kinds, list) else type(kinds).__name__}")
        bad = sorted({k for k in kinds if k not in get_args(LayerType)})
        if bad:
            raise ValueError(f"layer_types holds {', '.join(map(repr, bad))}; each entry is 'global' or 'local'")
        if "local" in kinds and self.sliding_window is None:
            raise ValueError("layer_types has 'local' layers but sliding_window is None: set the window they use")

    @property
    def layer_windows(self) -> list[int | None]:
        """The attention window of each layer: sliding_window for local layers, None (full) for global ones."""
        if self.layer_types is None:
            return [self.sliding_window] * self.n_layers
        return [self.sliding_window if k == "local" else None for k in self.layer_types]

    def _check_token_ids(self) -> None:
        """Ids must be non-negative integers. One past the vocabulary is kept with a warning, as transformers
        keeps it (its own default configs carry such ids at a small vocabulary): no token can equal it, so as
        a stop id it never stops, and pooling at it finds no position."""
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [] if value is None else [value]
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
                raise ValueError(f"{name}={value!r} must be None or a non-negative token id"
                                 + (" (or a list of them)" if name == "eos_token_id" else ""))
            if any(i >= self.vocab_size for i in ids):
                warnings.warn(f"{name}={value!r} lies outside the vocabulary [0, vocab_size={self.vocab_size}): "
                              "no token can equal it (a stop id that never stops); set it to a token id to use it",
                              UserWarning, stacklevel=4)

    def _check_arch(self) -> None:
        if self.arch in ("encoder", "vision") and self.causal:
            raise ValueError("causal=True with arch='encoder': an encoder attends in both directions; "
                             "use arch='causal_lm' for a decoder")
        if self.arch in ("encoder", "vision") and self.moe is not None:
            raise ValueError(f"n_experts={self.moe.n_experts}: mixture-of-experts layers are implemented for "
                             "arch='causal_lm' and 'seq2seq'")
        if self.arch == "seq2seq" and self.residual == "parallel":
            raise ValueError("residual='parallel' is not defined for arch='seq2seq' (no parallel cross-attention)")
        if self.arch == "seq2seq" and not self.causal:
            raise ValueError("causal=False with arch='seq2seq': the decoder of an encoder-decoder is causal")
        if self.arch != "seq2seq" and self.n_decoder_layers is not None:
            raise ValueError(f"n_decoder_layers={self.n_decoder_layers} needs arch='seq2seq'")
        if self.arch == "seq2seq" and (not isinstance(self.n_decoder_layers, int) or self.n_decoder_layers <= 0):
            raise ValueError(f"n_decoder_layers={self.n_decoder_layers!r} must be a positive integer")
        if self.embed_norm and self.arch == "seq2seq":
            raise ValueError("embed_norm=True is for encoders (BERT) and decoders (BLOOM), not arch='seq2seq'")
        for name, value in self.heads.any().items():
            if name in ("pooler", "num_labels") and self.arch == "vision":
                continue  # ViT's pooler (dense + tanh) and its classifier on the [CLS] token
            if self.arch != "encoder":
                raise ValueError(f"{name}={value!r} needs arch='encoder' (BERT-style heads and embeddings)")
        h = self.heads
        if (h.nsp_head or h.num_labels) and not h.pooler and self.arch == "encoder":
            raise ValueError("nsp_head/num_labels classify the pooled [CLS] output: they need pooler=True")
        if self.pos == "relative":
            self.score_bias.check_relative()
        if self.audio is not None and (self.arch != "seq2seq" or self.pos != "learned"):
            raise ValueError(f"n_mels={self.audio.n_mels}: an audio encoder is for arch='seq2seq' with pos='learned' "
                             "(its positions a table, as Whisper's)")
        if self.cross_attention_dim is not None and (not isinstance(self.cross_attention_dim, int)
                                                     or self.cross_attention_dim <= 0):
            raise ValueError(f"cross_attention_dim={self.cross_attention_dim!r} must be a positive integer or None")
        if self.embed_scale == "inv_sqrt_d" or self.attn_scale == "sqrt_d" or self.lm_head_scale == "sqrt_d":
            raise ValueError(f"embed_scale={self.embed_scale!r}, attn_scale={self.attn_scale!r}, lm_head_scale="
                             f"{self.lm_head_scale!r}: embed_scale takes none|sqrt_d, the other two none|inv_sqrt_d")

    # derived -------------------------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        """Number of leading head dims rotated by RoPE."""
        return int(self.head_dim * self.rope.fraction)

    @property
    def gated(self) -> bool:
        """True for GLU-family FFNs (three matrices: gate, up, down)."""
        return self.ffn in GATED_FFNS

    @property
    def n_stack_layers(self) -> int:
        """All transformer layers: encoder plus decoder for seq2seq."""
        return self.n_layers + (self.n_decoder_layers or 0)

    @property
    def eos_ids(self) -> list[int]:
        """eos_token_id as a list (empty when the model has none)."""
        e = self.eos_token_id
        return [] if e is None else list(e) if isinstance(e, list) else [e]

    @property
    def context_length(self) -> float:
        """Positions the model was trained for: max_seq_len, times the factor of a RoPE scaling (position
        interpolation, Chen et al., 2023; NTK-aware scaling, bloc97, 2023); unbounded for ALiBi, whose
        linear biases extrapolate (Press et al., 2022, "train short, test long")."""
        if self.pos == "alibi":
            return float("inf")
        if self.pos == "rope" and self.rope.scaling in ("linear", "ntk", "dynamic"):
            return int(self.max_seq_len * self.rope.factor)
        if self.pos == "rope" and self.rope.scaling == "yarn":
            return max(self.max_seq_len, int(self.rope.original_max_seq_len * self.rope.factor))
        # llama3: max_seq_len (config.json's max_position_embeddings) is already the extended context
        return self.max_seq_len

    @property
    def n_query_groups(self) -> int:
        """Query heads per kv head (1 for MHA, n_heads for MQA)."""
        return self.n_heads // self.n_kv_heads

    # construction helpers ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated again. A derived field that holds its default
        (head_dim = d_model // n_heads, n_kv_heads = n_heads, d_ff = 4 d_model, n_decoder_layers =
        n_layers) follows its inputs when they change, unless it is changed too: overriding d_model and
        n_heads of a preset must not keep the preset's head size."""
        follows = {"head_dim": (("d_model", "n_heads"), self.head_dim == self.d_model // max(self.n_heads, 1)),
                   "n_kv_heads": (("n_heads",), self.n_kv_heads == self.n_heads),
                   "d_ff": (("d_model",), self.d_ff == 4 * self.d_model),
                   "n_decoder_layers": (("n_layers",), self.n_decoder_layers == self.n_layers)}
        for name, (inputs, is_default) in follows.items():
            if name not in changes and is_default and any(k in changes for k in inputs):
                changes[name] = None
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Config:
        """A named preset (see ``groundup.presets.PRESETS``), optionally with fields overridden."""

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
        kwargs = {**PRESETS[name], "name": name, **overrides}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """A Config from its fields (sub-configs as dicts or records), or the flat keywords of their fields."""
        known = {f.name for f in dataclasses.fields(cls)} | set(FLAT)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Config field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def load(cls, spec: str) -> Config:
        """A preset name, or a path to a JSON file of Config fields."""
        path = Path(spec)
        if path.suffix == ".json" and path.is_file():
            return cls.from_dict(json.loads(path.read_text()))
        return cls.preset(spec)


# The sub-configs' fields by their flat names, as presets, config files and scripts give them: ``Config(n_experts=8,
# top_k=2)`` is ``Config(moe=MoEConfig(n_experts=8, top_k=2))``, ``rope_theta=1e6`` is ``rope=RoPEConfig(theta=1e6)``,
# ``image_size=336`` is ``image=ImageConfig(image_size=336)``; ``replace`` and ``from_dict`` take them too.
FLAT: dict[str, tuple[str, str]] = {
    **{flat: ("rope", name) for name, flat in RoPEConfig.FLAT.items()},
    **{f.name: ("moe", f.name) for f in dataclasses.fields(MoEConfig)},
    **{f.name: (kind, f.name) for kind, cls in (("image", ImageConfig), ("heads", HeadsConfig), ("audio", AudioConfig),
                                               ("score_bias", ScoreBiasConfig), ("impl", ImplConfig))
       for f in dataclasses.fields(cls)},
}
_RECORDS = {"rope": RoPEConfig, "moe": MoEConfig, "image": ImageConfig, "heads": HeadsConfig, "audio": AudioConfig,
            "score_bias": ScoreBiasConfig, "impl": ImplConfig}


# The records that are None when off: the field whose 0 turns them off, and the fields that mean nothing without
# them (refused alone); their other settings given alone (a preset's routing defaults) are checked, then unused.
_OPTIONAL = {"moe": ("n_experts", ("moe_layers",)), "audio": ("n_mels", ("encoder_max_seq_len",))}


def _record(kind: str, base: Any, changes: dict[str, Any]) -> Any:
    """The sub-config ``kind`` from ``base`` (a record, its dict, or None) with ``changes``."""
    cls = _RECORDS[kind]
    switch, needs = _OPTIONAL.get(kind, (None, ()))
    if switch is not None and changes.get(switch, 1) == 0:
        return None
    if isinstance(base, cls):
        return dataclasses.replace(base, **changes) if changes else base
    if base is None and switch is not None and switch not in changes:
        probe = cls()
        for k, v in changes.items():
            setattr(probe, k, v)  # no __post_init__: only the values are checked, not their combination
        check_literals(probe)
        given = next((k for k in needs if changes.get(k) is not None), None)
        if given is not None:
            raise ValueError(f"{given} needs {switch} > 0")
        return None
    return cls(**{**(base or {}), **changes})


def _route(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Config's keyword arguments with the flat names gathered into their sub-configs (and dicts into records)."""
    out = {k: v for k, v in kwargs.items() if k not in FLAT}
    for kind in _RECORDS:
        changes = {FLAT[k][1]: v for k, v in kwargs.items() if FLAT.get(k, ("",))[0] == kind}
        n = changes.get("n_experts")
        if kind == "moe" and n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"n_experts={n!r} must be >= 0 (0 means a dense FFN)")
        if changes or isinstance(out.get(kind), dict):
            out[kind] = _record(kind, out.get(kind), changes)
    return out


_dataclass_init = Config.__init__


@functools.wraps(_dataclass_init)
def _init(self: Config, **kwargs: Any) -> None:
    _dataclass_init(self, **_route(kwargs))


Config.__init__ = _init
