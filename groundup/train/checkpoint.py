"""Training checkpoints: an HF model folder plus everything needed to continue exactly.

    checkpoint/
      config.json, model.safetensors     the model (groundup.from_pretrained and transformers load it), or
      adapter_config.json + adapter_model.safetensors   for a LoRA run: the adapter only (peft's format)
      tokenizer.json, tokenizer_config.json
      optimizer.safetensors + .json      AdamW moments (tensors) and param groups (JSON)
      rng.safetensors                    torch CPU (and CUDA) generator states
      trainer_state.json                 step, tokens seen, data-mixture position, the run's settings

No pickle anywhere: tensors are safetensors and the rest is JSON, so loading a checkpoint cannot run code.
The folder is written under a temporary name and swapped in, so a crash mid-write keeps the previous one.

A model sharded with FSDP (its parameters and AdamW moments are DTensors) is saved in the same format:
every rank takes part in gathering the full tensors, rank 0 writes them; on loading, each rank keeps its
shard of the full tensors. So a checkpoint does not depend on how many processes wrote or read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch build without torch.distributed: nothing can be sharded
    DTensor = ()  # type: ignore[assignment,misc]

from ..checkpoint.hf import from_pretrained, write_model
from ..peft import adapter_layers, has_adapter, load_adapter, write_adapter
from ..utils.files import atomic_folder, read_safetensors

STATE = "trainer_state.json"


class Checkpointable:
    """A trained module that is not a plain model (a reward model with its score head, a policy with a value
    head): it writes and reads its own weights in a checkpoint folder; the loop adds the rest."""

    def write_checkpoint(self, folder: Path) -> None:
        raise NotImplementedError

    def read_checkpoint(self, folder: Path) -> None:
        raise NotImplementedError


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU; for a DTensor shard this is a collective (all ranks must call it)."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().contiguous()


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `ref`: this rank's shard when ref is a DTensor, else full itself."""
    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.dtype), ref.device_mesh, ref.placements)
    return full


def _optimizer_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}/{k}"] = _full(v)
            else:
                scalars[f"{idx}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                    tokenizer: Any = None, *, write: bool = True) -> Path:
    """Write the checkpoint folder atomically (see the module docstring). With a sharded model every rank
    calls this (gathering is collective) and only the one with ``write`` writes."""
    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    model_state = {k: _full(v) for k, v in model.state_dict().items()} if sharded else None
    tensors, meta = _optimizer_files(optimizer)
    if not write:
        return Path(folder)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})

    def write(tmp: Path) -> None:
        if isinstance(model, Checkpointable):
            model.write_checkpoint(tmp)
        elif adapter_layers(model):  # a frozen base: only the adapter changes, in peft's format
            write_adapter(model, tmp)
        else:
            write_model(model, tmp, state_dict=model_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / STATE).write_text(json.dumps(state, indent=2))

    return atomic_folder(folder, write)


def load_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model weights, optimizer and RNG state in place; return the trainer state."""

    folder = Path(folder)
    if not (folder / STATE).is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no {STATE}); nothing to resume")
    if isinstance(model, Checkpointable):
        model.read_checkpoint(folder)
    elif has_adapter(folder):
        load_adapter(model, folder, into_existing=True)
    else:
        loaded = from_pretrained(folder)
        own = model.state_dict()
        model.load_state_dict({k: _like(v, own[k]) for k, v in loaded.state_dict().items()})
    tensors = read_safetensors(folder / "optimizer.safetensors")
    meta = json.loads((folder / "optimizer.json").read_text())
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state_dict's numbering
    state: dict[int, dict] = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split("/", 1)
        if torch.is_tensor(v) and v.dim() > 0:  # moments are shaped like their parameter (step is a scalar)
            v = _like(v, params[int(idx)])
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng = read_safetensors(folder / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return json.loads((folder / STATE).read_text())
