"""The architecture of a model as data: ``Config`` (the core, one screen for a plain decoder) and the records
of what only some models have, each None or defaulted when unused: ``MoEConfig`` (routed experts),
``RoPEConfig`` (rotary positions and their context extension), ``ImageConfig`` (a vision encoder's patches)."""

from .core import (
    FLAT,
    GATED_FFNS,
    Arch,
    Config,
    Ffn,
    LayerType,
    Norm,
    NormPlacement,
    Pos,
    QKNorm,
    Residual,
    Scale,
    SinusoidalLayout,
)
from .image import ImageConfig, VisionPool
from .moe import BalanceScope, MoEConfig, Router, RouterGroup, RouterPriority
from .parts import AudioConfig, HeadsConfig, ImplConfig, Kernel, ScoreBiasConfig
from .rope import RoPEConfig, RopeScaling

__all__ = [
    "FLAT",
    "GATED_FFNS",
    "Arch",
    "AudioConfig",
    "BalanceScope",
    "Config",
    "Ffn",
    "HeadsConfig",
    "ImageConfig",
    "ImplConfig",
    "Kernel",
    "LayerType",
    "MoEConfig",
    "Norm",
    "NormPlacement",
    "Pos",
    "QKNorm",
    "Residual",
    "RoPEConfig",
    "RopeScaling",
    "Router",
    "RouterGroup",
    "RouterPriority",
    "Scale",
    "ScoreBiasConfig",
    "SinusoidalLayout",
    "VisionPool",
]
