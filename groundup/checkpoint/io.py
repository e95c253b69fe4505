"""Reading and writing weight folders: safetensors only (single file or sharded index), atomic saves.

Pickle-based checkpoints (.bin, .pt, .pth, .ckpt) are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..utils.files import FileError, atomic_file, atomic_folder, corrupt_safetensors
from ..utils.files import read_json as _read_json

__all__ = ["CheckpointError", "atomic_file", "atomic_folder", "load_into", "load_tensors", "read_json", "weight_files",
           "write_tensors"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(FileError):
    """A checkpoint folder or its contents cannot be used; the message says what and how to fix it."""


def read_json(path: Path) -> dict:
    """A JSON object from a file, with the file named in any error (CheckpointError)."""
    return _read_json(path, error=CheckpointError)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, or a CheckpointError explaining why there are none."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that are not in the folder: {', '.join(missing)}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle checkpoint(s) ({', '.join(pickles)}). groundup never unpickles "
            "weights: loading a pickle can run arbitrary code. Convert it once, in a trusted environment, "
            "e.g. `transformers.AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, "
            "safe_serialization=True)`, which writes model.safetensors."
        )
    raise CheckpointError(f"{folder} has no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file")


def iter_tensors(folder: str | Path, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a folder's safetensors file(s) one at a time, (name, tensor), floats optionally cast to
    ``dtype``: a caller that keeps a smaller form of each (quantize on load) never holds them all."""
    for path in weight_files(Path(folder)):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    yield name, (t.to(dtype) if dtype is not None and t.is_floating_point() else t)
        except SafetensorError as err:
            raise corrupt_safetensors(path, err, error=CheckpointError) from None


def load_tensors(folder: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors file(s) by name, optionally cast to ``dtype``."""
    return dict(iter_tensors(folder, dtype))


def write_tensors(folder: Path, tensors: dict[str, torch.Tensor], *, max_shard_bytes: int = 5 * 2**30,
                  metadata: dict[str, str] | None = None) -> None:
    """Write safetensors into an existing folder: one model.safetensors, or shards plus an index."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_FILE), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Assign ``state`` to a (meta-device) model after checking names and shapes; re-ties embeddings.

    Tied aliases (``model.tied_keys()``) may be absent from ``state`` or equal to their source.
    """
    tied = model.tied_keys()
    state = {k: v for k, v in state.items() if k not in tied}
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in tied}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:20])}")
        if extra:
            parts.append(f"unexpected {len(extra)} tensor(s): {', '.join(extra[:20])}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, the config "
                                  f"expects {tuple(shape)}")
    # Row-major weights: transposed Conv1D matrices and q/k/v slices are views until copied here, and the
    # CPU matmul paths of nn/linear.py read W's rows in order.
    state = {k: v.contiguous() for k, v in state.items()}
    state.update({alias: state[src] for alias, src in tied.items()})
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model
