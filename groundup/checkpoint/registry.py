"""The family registry: every Hugging Face ``model_type`` of a single-stack model groundup reads and writes
(decoder-only, encoder-only, encoder-decoder, mixture of experts, groundup's own), by name. The models made
of towers (vit, clip, siglip, llava, blip-2, idefics) have their layouts in checkpoint/vision.py and
checkpoint/flamingo.py.

Everything that translates between groundup and an HF layout (checkpoint/hf.py for whole models, peft/io.py
for adapters, calc for folders) looks a family up here, so a family added to decoders.py, gemma.py or
encoders.py is known to all of them at once. To add one: write its Family in the module of its architecture
and list it there; a new module of families is merged into FAMILIES below.
"""

from __future__ import annotations

from ..config import Config
from .decoders import DECODERS
from .encoders import ENCODERS
from .gemma import GEMMAS, REFUSED
from .io import CheckpointError
from .layout import Family, UnsupportedConfig
from .moe import MOES
from .native import NATIVE

FAMILIES: dict[str, Family] = {**DECODERS, **GEMMAS, **ENCODERS, **MOES, **NATIVE}
# Config fields that only some layouts hold (Family.expresses); None means off
OPTIONAL_FIELDS = ("layer_types", "rope_local_theta", "attn_softcap", "logit_softcap", "attn_scale_dim")


def family_of(cfg: Config) -> Family:
    """The Family of ``cfg.family``, or a CheckpointError listing the families that have an HF layout."""
    if cfg.family not in FAMILIES:
        raise CheckpointError(f"Config.family={cfg.family!r} has no HF layout; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[cfg.family]


__all__ = ["FAMILIES", "OPTIONAL_FIELDS", "REFUSED", "Family", "UnsupportedConfig", "family_of"]
