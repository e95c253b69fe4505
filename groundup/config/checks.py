"""What every config record shares: ``replace``, and the check that each Literal-typed field holds one of its
values."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_type_hints


class Record:
    """The base of Config's records (MoEConfig, RoPEConfig, ...): a validated copy with some fields changed."""

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


def check_literals(record: Any) -> None:
    """Raise ValueError naming the first field whose value is not one of its Literal's choices."""
    hints = get_type_hints(type(record))
    for f in dataclasses.fields(record):
        allowed = get_args(hints[f.name])
        if allowed and all(isinstance(a, str) for a in allowed):
            value = getattr(record, f.name)
            if value not in allowed:
                raise ValueError(f"{f.name}={value!r} is not one of {', '.join(map(repr, allowed))}")
