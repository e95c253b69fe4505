"""RoPEConfig: rotary position embeddings (Su et al., 2021) and their context-extension schemes. ``Config.rope`` is
read where ``Config.pos == "rope"``; nn/position.py computes the cos/sin tables from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .checks import Record, check_literals

RopeScaling = Literal["none", "linear", "ntk", "dynamic", "llama3", "yarn", "longrope"]


@dataclass
class RoPEConfig(Record):
    """The rotation's base and share of each head, and how it is stretched past the trained context.

    Construction takes these names, or the flat ``Config`` keywords they replace (``rope_theta``,
    ``rotary_fraction``, ``rope_scaling``, ``rope_scaling_factor``, ``rope_<field>``): see ``Config``."""

    theta: float = 10000.0
    fraction: float = 1.0  # partial rotary (GPT-NeoX/Pythia rotate the first 25% of each head)
    scaling: RopeScaling = "none"
    factor: float = 1.0
    # dynamic (dynamic NTK, emozilla 2023): the NTK base grows with the current length L past max_seq_len,
    # theta * (factor L / max_seq_len - factor + 1)^(rot / (rot - 2)); within max_seq_len plain RoPE
    # llama3 scaling (Llama 3.1): wavelengths above original / low_freq_factor are divided by the factor, those
    # below original / high_freq_factor kept, the band between interpolated; original = the pre-training context
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int | None = None
    # yarn (Peng et al., 2023; Qwen2.5 long context): dims rotating more than beta_fast times over the original
    # context keep their frequency, fewer than beta_slow times are interpolated, a linear ramp between; cos and
    # sin are multiplied by the attention factor (None: 0.1 ln(factor) + 1)
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    # longrope (Ding et al., 2024; Phi-3.5-mini, Phi-3-*-128k): per-dimension divisors of the frequencies, the
    # short ones while the length is within original_max_seq_len, the long ones past it; cos and sin are
    # multiplied by the attention factor (None: sqrt(1 + ln(factor) / ln(original)))
    short_factor: list[float] | None = None
    long_factor: list[float] | None = None

    # the flat Config keyword of each field (the errors name fields by it, as config files and presets do)
    FLAT: ClassVar[dict[str, str]] = {"theta": "rope_theta", "fraction": "rotary_fraction", "scaling": "rope_scaling",
            "factor": "rope_scaling_factor", "low_freq_factor": "rope_low_freq_factor",
            "high_freq_factor": "rope_high_freq_factor", "original_max_seq_len": "rope_original_max_seq_len",
            "beta_fast": "rope_beta_fast", "beta_slow": "rope_beta_slow", "attention_factor": "rope_attention_factor",
            "short_factor": "rope_short_factor", "long_factor": "rope_long_factor"}

    def __post_init__(self) -> None:
        check_literals(self)
        if self.scaling != "none" and self.factor < 1.0:
            raise ValueError(f"rope_scaling_factor={self.factor} must be >= 1 to extend context")
        if self.theta <= 0:
            raise ValueError(f"rope_theta={self.theta} must be positive")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"rotary_fraction={self.fraction} must be in (0, 1]")
        if self.scaling in ("llama3", "yarn", "longrope"):
            if not self.original_max_seq_len or self.original_max_seq_len <= 0:
                raise ValueError(f"rope_scaling={self.scaling!r} needs rope_original_max_seq_len (the "
                                 "pre-training context, e.g. 8192 for Llama 3.1)")
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError(f"rope_low_freq_factor={self.low_freq_factor} must be > 0 and below "
                                 f"rope_high_freq_factor={self.high_freq_factor}")

    def check_dims(self, head_dim: int) -> None:
        """The checks that need the head size: an even number of rotated dims, longrope's factor lists."""
        rot = int(head_dim * self.fraction)
        if rot < 2 or rot % 2:
            raise ValueError(f"rotary_fraction={self.fraction} x head_dim={head_dim} gives {rot} rotary "
                             "dims; RoPE rotates pairs, so it must be an even number >= 2")
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for pos='rope'")
        if self.scaling == "longrope":
            for name in ("short_factor", "long_factor"):
                value = getattr(self, name)
                if not isinstance(value, list) or len(value) != rot // 2:
                    raise ValueError(f"rope_scaling='longrope' needs {self.FLAT[name]}: a list of rotary_dim / 2 = "
                                     f"{rot // 2} numbers, got {value!r}")

