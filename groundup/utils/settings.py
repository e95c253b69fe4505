"""Run settings as typed dataclasses: defaults written once (the fields), then a YAML file, then command-line
flags. ``add_flags`` turns the fields into argparse options (``--block-size`` for ``block_size``) whose
parsed value is None unless given, so ``merge`` can tell a flag given from a default."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

S = TypeVar("S")


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """One option per field of the dataclass ``cls``; a field's metadata may hold help, choices, nargs."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta, flag = dict(f.metadata), "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "") + f" (default {default!r})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, help=help_text)
            continue
        base = next((t for t in (int, float) if t in getattr(kind, "__args__", (kind,))), str)
        parser.add_argument(flag, dest=f.name, type=base, nargs=meta.get("nargs"), choices=meta.get("choices"),
                            help=help_text)


def merge(cls: type[S], *, config: str | Path | None = None, given: dict[str, Any] | None = None) -> S:
    """The settings: the fields' defaults, then the YAML file ``config`` (keys = field names), then
    ``given`` (flags that were set). Unknown keys and a missing file are errors naming them."""
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config:
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown} (known: {sorted(known)})")
        values.update(loaded)
    values.update({k: v for k, v in (given or {}).items() if k in known and v is not None})
    return cls(**values)
