"""groundup's own folder layout, for configs no transformers layout can hold (a Switch decoder with capacity,
expert-choice routing, a shared expert on Mixtral ...): config.json carries every Config field under
``groundup_config`` (model_type ``groundup``, or ``groundup_seq2seq`` for encoder-decoders) and the
safetensors use groundup's own tensor names. Only groundup reads it; transformers refuses the model_type,
which is the honest answer.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from ..config import Config
from ..models import meta_model
from .layout import Family, require

# set by config_from_hf from the folder itself (the token ids from config.json's top level, as for every family)
_SKIPPED = ("family", "name", "extra", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _to_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = hf.get("groundup_config")
    require(isinstance(fields, dict), "config.json of model_type 'groundup' needs a groundup_config object")
    return {k: v for k, v in fields.items() if k not in _SKIPPED}


def _to_hf(cfg: Config) -> dict[str, Any]:
    return {"groundup_config": {k: v for k, v in cfg.to_dict().items() if k not in _SKIPPED}}


@functools.lru_cache(maxsize=32)
def _templates(config_json: str) -> tuple[tuple[str, str], ...]:
    """Every module name of a model built from the config, layer and expert numbers made {i} / {e}."""

    model = meta_model(Config.from_dict(json.loads(config_json)))
    names = set()
    for key in model.state_dict():
        module = key.rpartition(".")[0]
        module = re.sub(r"(^|\.)blocks\.\d+\.", r"\1blocks.{i}.", module)
        names.add(re.sub(r"\.experts\.\d+\.", ".experts.{e}.", module))
    return tuple((n, n) for n in sorted(names))


def _keys(cfg: Config) -> list[tuple[str, str]]:
    return list(_templates(json.dumps(cfg.to_dict(), sort_keys=True)))


NATIVE: dict[str, Family] = {
    "groundup": Family("groundup", "GroundupCausalLM", _to_config, _to_hf, _keys),
    "groundup_seq2seq": Family("groundup_seq2seq", "GroundupSeq2Seq", _to_config, _to_hf, _keys, arch="seq2seq"),
}
