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
    """One option per field of the dataclass ``cls``; a field's metadata may hold help, choices, nargs,
    required, or positional (an argument, not an option)."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta, flag = dict(f.metadata), "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "") + f" (default {default!r})"
        if meta.get("positional"):
            parser.add_argument(f.name, help=meta.get("help"))
            continue
        if kind is bool:  # --x turns it on; a field that defaults to on also gets --no-x
            action = argparse.BooleanOptionalAction if default else "store_const"
            extra = {} if default else {"const": True}
            parser.add_argument(flag, dest=f.name, action=action, default=None, help=help_text, **extra)
            continue
        base = next((t for t in (int, float) if t in getattr(kind, "__args__", (kind,))), str)
        parser.add_argument(flag, dest=f.name, type=base, nargs=meta.get("nargs"), choices=meta.get("choices"),
                            required=bool(meta.get("required")), help=help_text)


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


def option(default: Any, help: str = "", **meta: Any) -> Any:
    """A settings field: its default, the help of its flag, and flag metadata (choices, positional ...)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def option_list(help: str, default: list | None = None, **meta: Any) -> Any:
    """A settings field holding a list (one or more values on the command line)."""
    return dataclasses.field(default_factory=lambda: None if default is None else list(default),
                             metadata={"help": help, "nargs": "+", **meta})
