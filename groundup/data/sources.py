"""Where training text comes from: local files and globs, and a corpus that is on every machine.

A `Source` yields documents (str). A .txt/.md/.py/... file is one document; each line of a .jsonl file
is one document (its `text_field`); each row of a .parquet file is one (needs pyarrow). The source named
"python-stdlib" is the running Python's standard library source (~30 MB): real code with English
comments and docstrings, present without any download. Every problem (nothing matches, an empty corpus,
a JSONL line without the field) is reported with the file and line before any training starts.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STDLIB = "python-stdlib"


def stdlib_files(include_tests: bool = True) -> list[Path]:
    """The standard library's .py files in sorted path order (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py"))
            if "site-packages" not in p.parts and (include_tests or "test" not in p.parts)]


def python_stdlib(n_bytes: int, *, include_tests: bool = True) -> str:
    """The stdlib's .py files concatenated in sorted path order, cut at `n_bytes` characters (the files
    are nearly all ASCII, so about that many bytes); include_tests=False skips test folders."""
    parts, size = [], 0
    for path in stdlib_files(include_tests):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode())
        if size >= n_bytes:
            break
    if size < n_bytes:
        raise ValueError(f"the Python standard library holds only {size:,} bytes of source, fewer than the "
                         f"{n_bytes:,} asked for")
    return "".join(parts)[:n_bytes]


@dataclass
class Source:
    """One named source of documents with its mixture weight.

    spec: "python-stdlib", a file, or a glob ("data/**/*.jsonl"). text_field: the JSONL/parquet column.
    weight: its share of the training tokens in a mixture (normalized over sources). max_bytes: stop
    reading after about this much text (None: everything).
    """

    spec: str
    weight: float = 1.0
    text_field: str = "text"
    name: str | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = _default_name(self.spec)
        if not self.weight > 0:
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")

    def files(self) -> list[Path]:
        if self.spec == STDLIB:
            return stdlib_files()
        path = Path(self.spec)
        found = [path] if path.is_file() else [Path(p) for p in sorted(glob.glob(self.spec, recursive=True))]
        found = [p for p in found if p.is_file()]
        if not found:
            raise FileNotFoundError(f"source {self.name!r}: no file matches {self.spec!r}")
        return found

    def fingerprint(self) -> str:
        """Changes when a file is added, removed, resized or touched, or a reading option changes."""
        h = hashlib.sha256(json.dumps([self.spec, self.text_field, self.max_bytes]).encode())
        for p in self.files():
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def documents(self) -> Iterator[str]:
        """The documents, in a fixed order. Raises ValueError if there are none."""
        n, size = 0, 0
        for doc in self._read():
            if doc:
                n += 1
                size += len(doc)
                yield doc
                if self.max_bytes is not None and size >= self.max_bytes:
                    break
        if n == 0:
            raise ValueError(f"source {self.name!r} ({self.spec}) has no text: every document is empty")

    def _read(self) -> Iterator[str]:
        for path in self.files():
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                yield from _jsonl(path, self.text_field)
            elif suffix == ".parquet":
                yield from _parquet(path, self.text_field)
            else:
                yield path.read_bytes().decode("utf-8", "replace")


def _default_name(spec: str) -> str:
    """python-stdlib; a file's stem; a glob's last folder without wildcards ('data/web/*.jsonl' -> 'web')."""
    if spec == STDLIB:
        return STDLIB
    parts = Path(spec).parts
    plain = [p for p in parts if not any(c in p for c in "*?[")]
    if len(plain) == len(parts):
        return Path(spec).stem
    return plain[-1] if plain and plain[-1] not in (".", "..", "/") else "data"


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or field not in row:
                keys = sorted(row)[:8] if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"{path}:{lineno}: no {field!r} field (found {keys}); set the source's "
                                 "text_field")
            if not isinstance(row[field], str):
                raise ValueError(f"{path}:{lineno}: field {field!r} is {type(row[field]).__name__}, not text")
            yield row[field]


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise ValueError(f"{path}: no column {field!r} (columns: {table.schema_arrow.names[:8]})")
    for batch in table.iter_batches(columns=[field]):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))
