"""The product speaks of what it is: no issue numbers, no rule numbers of a list no product document defines,
no "the issue's" goals. Checked across line breaks in the package, the docs and the README."""

from __future__ import annotations

import re
from pathlib import Path

import groundup

ROOT = Path(groundup.__file__).parent.parent
# \s+ rather than a space: a phrase broken over two lines of a docstring or a Markdown paragraph counts too
PATTERN = re.compile(r"(?i)\bissue\s+\d+|the\s+issue's|house\s+rules?\b")
SUFFIXES = {".py", ".md", ".html", ".yaml", ".txt", ".toml", ".json", ".jsonl"}


def _texts() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("groundup", "docs"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in SUFFIXES]
    return files


def _hits(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, " ".join(m.group().split())) for m in PATTERN.finditer(text)]


def test_pattern_finds_a_phrase_across_lines():
    assert _hits("meets the\nissue's goal") == [(1, "the issue's")]
    assert _hits("x\nSee Issue\n  12 for it") == [(2, "Issue 12")]
    assert _hits("as house\nrule 3 wants") == [(1, "house rule")]
    assert _hits("an issue of bytes, 12 issues") == []


def test_product_text_speaks_of_itself():
    bad = [f"{p.relative_to(ROOT)}:{line}: {hit!r}"
           for p in _texts() for line, hit in _hits(p.read_text(errors="ignore"))]
    assert not bad, "\n".join(bad)
