"""GGUF files read by groundup itself: the metadata as Python values and each tensor's name, shape, type and
bytes as a view of a copy-on-write memory map. Long string arrays (the tokenizer's vocabulary and merges) are
stepped over unless asked for (``strings=True``), so a model loads without decoding its vocabulary; the `gguf`
package's reader builds numpy objects for every string first, seconds on a 50k-token vocabulary. Writing
stays with the `gguf` package.

Layout (GGUF v2/v3, little-endian): magic, version, tensor count, key-value count; each key-value a string
key, a value type and the value (arrays: item type, count, items); each tensor's name, dims (innermost
first), ggml type and offset; then the data, aligned to ``general.alignment`` (32 unless given).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import FileError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9
LONG_STRINGS = 512  # string arrays longer than this are stepped over (None in fields) unless strings=True


@dataclass
class TensorInfo:
    """One tensor: ``shape`` in ggml order (innermost first), ``type_id`` its ggml type, ``data`` its bytes."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    data: np.ndarray  # uint8 view of the file

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class _Cursor:
    def __init__(self, buf: memoryview, strings: bool) -> None:
        self.buf, self.pos, self.strings = buf, 0, strings

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        text = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, kind: int) -> Any:
        if kind == STRING:
            return self.string()
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind != ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in _NUMPY:
            size = np.dtype(_NUMPY[item]).itemsize
            values = np.frombuffer(self.buf, dtype=_NUMPY[item], count=count, offset=self.pos)
            self.pos += size * count
            return values.tolist()
        if item == STRING and count > LONG_STRINGS and not self.strings:
            for _ in range(count):  # step over: each string is its length and its bytes
                self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
            return None
        return [self.value(item) for _ in range(count)]


def read_header(path: Path, formats: dict[int, tuple[str, int, int]] | None = None, *, strings: bool = False
                ) -> tuple[dict[str, Any], list[TensorInfo]]:
    """(metadata, tensors) of a GGUF file; ``formats`` ({ggml type: (name, values a block, bytes a block)})
    sizes the tensors' bytes (without it no tensor is listed); ``strings`` decodes long string arrays too.
    ValueError (or struct.error) on a damaged file."""
    mapped = np.memmap(path, dtype=np.uint8, mode="c")
    cur = _Cursor(memoryview(mapped), strings)
    if bytes(mapped[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (2 and 3 are read)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    fields = {}
    for _ in range(n_kv):
        key = cur.string()
        fields[key] = cur.value(cur.scalar("<I"))
    if formats is None:
        return fields, []
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.scalar("<Q") for _ in range(cur.scalar("<I")))
        infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    align = int(fields.get("general.alignment", 32))
    start = -(-cur.pos // align) * align
    tensors = []
    for name, dims, type_id, offset in infos:
        _, per, size = formats.get(type_id, ("?", 1, 0))
        nbytes = int(np.prod(dims)) // per * size
        if start + offset + nbytes > mapped.shape[0]:
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors.append(TensorInfo(name, dims, type_id, mapped[start + offset:start + offset + nbytes]))
    return fields, tensors


def open_gguf(path: str | Path, formats: dict[int, tuple[str, int, int]] | None = None, *, strings: bool = False,
              error: type[ValueError] = FileError) -> tuple[dict[str, Any], list[TensorInfo]]:
    """``read_header`` with a missing, truncated or foreign file named in ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is not a file")
    try:
        return read_header(path, formats, strings=strings)
    except Exception as err:  # struct errors, bad magic, offsets past the end
        raise error(f"{path}: not a readable GGUF file ({type(err).__name__}: {err}); the file may be "
                    "truncated or not GGUF: download or convert it again") from None
