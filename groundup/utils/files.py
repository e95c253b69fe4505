"""Files written so that a crash never leaves half of one, and files read so that a bad one is named.

Writers go through a temporary file or folder beside the target and an ``os.replace`` into place: readers
see the old version or the new one, never a mix. Readers raise FileError (a ValueError) that names the
file, says what is wrong with it and how to get a good one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class FileError(ValueError):
    """A file or folder that cannot be used; the message names it and says how to fix it."""


def read_json(path: str | Path, *, error: type[ValueError] = FileError) -> dict[str, Any]:
    """A JSON object from a file, with the file, line and column named in any error (of class ``error``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON: line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def corrupt_safetensors(path: Path, err: Exception, *, error: type[ValueError] = FileError) -> ValueError:
    """The error for a safetensors file that cannot be read: which file, what is wrong, what to do."""
    size = path.stat().st_size if path.exists() else 0
    truncated = size >= 8 and "incomplete" in str(err)
    what = ("is truncated (an interrupted download or copy?)" if truncated
            else "is not a safetensors file (or its header is damaged)")
    return error(f"{path} {what}: {err}; {size:,} bytes on disk. Download or copy the file again, or save it "
                 "again (save_pretrained / save_adapter)")


def read_safetensors(path: str | Path, *, error: type[ValueError] = FileError) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (never a pickle); a missing, truncated or foreign file is named."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise corrupt_safetensors(path, err, error=error) from None


def gguf_package(*, error: type[ValueError] = FileError):
    """The `gguf` package (llama.cpp's container reader/writer), or an error naming the extra that installs it."""
    try:
        import gguf
    except ImportError:
        raise error("writing GGUF needs the gguf package: pip install 'groundup[gguf]'") from None
    return gguf


def atomic_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path`` (same suffix, so writers that go by the
    extension still work), then rename it into place: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return atomic_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_folder(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` into a fresh temporary folder beside ``folder``, then swap it into place.

    A crash at any moment leaves either the old folder or the new one complete, never a half-written mix.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
