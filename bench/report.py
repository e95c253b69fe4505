"""What every benchmark ends with: the command that made the table, the table printed, and (with --out)
the same page written to docs/."""

from __future__ import annotations

import sys
from pathlib import Path


def command() -> str:
    """`python bench/<script>.py <its arguments>`, as typed."""
    return " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def emit(title: str, lines: list[str], out: str | None) -> None:
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(f"# {title}\n\n{table}\n", encoding="utf-8")
