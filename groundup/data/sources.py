"""Text that is on every machine without a network: the Python standard library's own source.

Tests, benchmarks and demos need real text (code, English comments and docstrings, some Unicode) and
cannot download any; the interpreter's stdlib is ~30 MB of it, in a fixed order for a given Python.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


def python_stdlib(n_bytes: int, *, include_tests: bool = True) -> str:
    """The stdlib's .py files concatenated in sorted path order, cut at `n_bytes` UTF-8 bytes (roughly:
    the cut is by characters). site-packages is never included; include_tests=False skips test folders."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or (not include_tests and "test" in path.parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode())
        if size >= n_bytes:
            break
    if size < n_bytes:
        raise ValueError(f"the Python standard library at {root} holds only {size:,} bytes of source, "
                         f"fewer than the {n_bytes:,} asked for")
    return "".join(parts)[:n_bytes]
