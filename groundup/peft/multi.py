"""Many LoRA adapters on one frozen model, a different one per batch row, in a single forward pass.

The course lists serving several LoRA fine-tunes at once as LoRA's open limitation: merged adapters need
one model copy each, unmerged ones a forward per adapter. Here every adapted layer keeps all N adapters
stacked, A [N + 1, r, in] and B [N + 1, out, r] (slot N is all zeros: "no adapter"), and a row index picks
each row's pair with one gather; two batched products then add each row's own update (the idea of
S-LoRA and Punica, Sheng et al., 2023; Chen et al., 2023):

    y[b] = W x[b] + B[i_b] (A[i_b] x[b])        (the scaling alpha / r folded into B)

Adapters of different ranks are zero-padded to the largest (exact: the padding adds nothing), and a layer
an adapter does not touch holds zeros for it. A row with index -1 runs the base model alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ..nn.qlinear import io_shape, replace_module
from .io import AdapterFile, read_adapter
from .lora import LoraConfig, Wrapper, wrap_targets


class MultiLoraLinear(Wrapper):
    """base_layer(x) plus, for each batch row, the update of the adapter ``index[row]`` selects."""

    def __init__(self, base_layer: nn.Module, A: torch.Tensor, B: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.register_buffer("A", A)  # [N + 1, r, in]
        self.register_buffer("B", B)  # [N + 1, out, r], scaled
        self.index: torch.Tensor | None = None  # [batch] adapter per row; None: the base alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.index is None:
            return y
        if self.index.shape[0] != x.shape[0]:
            raise ValueError(f"{self.index.shape[0]} adapter indices for a batch of {x.shape[0]} rows")
        a = self.A[self.index].to(x.dtype)  # [B, r, in]: each row's own A
        b = self.B[self.index].to(x.dtype)  # [B, out, r]
        h = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), a.transpose(1, 2))  # [B, T, r]
        return y + torch.bmm(h, b.transpose(1, 2)).reshape(y.shape).to(y.dtype)


class LoraBank:
    """N peft LoRA folders served together on ``model`` (wrapped in place; the base stays frozen).

    ``bank.names`` are the folders' names in order. ``with bank.rows([0, 2, -1]):`` selects, for the
    forward passes and generation inside it, adapter 0 for row 0, adapter 2 for row 1 and none for row 2.
    """

    def __init__(self, model: nn.Module, folders: Sequence[str | Path | AdapterFile]) -> None:
        if not folders:
            raise ValueError("LoraBank needs at least one adapter folder")
        # every folder checked before the model changes; an AdapterFile (e.g. from combine) is taken as read
        files = [f if isinstance(f, AdapterFile) else read_adapter(model, f) for f in folders]
        for f in files:
            if f.kind != "LORA":
                raise ValueError(f"{f.path}: a {f.kind} adapter; LoraBank serves LoRA adapters")
            if f.saved:
                raise ValueError(f"{f.path}: the adapter trains whole modules ({', '.join(f.saved_modules)}) that "
                                 "the other rows would share; LoraBank serves adapters without modules_to_save")
        names = sorted({n for f in files for n in f.parts})
        modules = dict(model.named_modules())
        r = max(f.r for f in files)
        target = "|".join(n.replace(".", r"\.") for n in names)
        wrap_targets(model, LoraConfig(target_modules=target))  # checks + freezes
        for name in names:
            out_f, in_f = io_shape(modules[name])
            w = modules[name].weight
            A = w.new_zeros(len(files) + 1, r, in_f, dtype=torch.float32)  # the last slot: no adapter
            B = w.new_zeros(len(files) + 1, out_f, r, dtype=torch.float32)
            for i, f in enumerate(files):
                if name in f.parts:
                    ri = f.r
                    A[i, :ri] = f.parts[name]["lora_A"].float()
                    B[i, :, :ri] = f.parts[name]["lora_B"].float() * (f.alpha / ri)
            replace_module(model, name, MultiLoraLinear(modules[name], A, B))
        self.model, self.names = model, [f.path.name if isinstance(f, AdapterFile) else Path(f).name for f in folders]
        self.layers = [m for m in model.modules() if isinstance(m, MultiLoraLinear)]

    @contextlib.contextmanager
    def rows(self, adapters: Sequence[int] | torch.Tensor) -> Iterator[None]:
        """Use adapter ``adapters[b]`` for batch row b (-1: none) inside the block."""
        n = len(self.names)
        idx = torch.as_tensor(adapters, dtype=torch.long)
        if idx.dim() != 1 or bool(((idx < -1) | (idx >= n)).any()):
            raise ValueError(f"adapter indices must be a list of -1 .. {n - 1} (one per row), got {adapters!r}")
        idx = torch.where(idx < 0, torch.full_like(idx, n), idx)
        device = self.layers[0].A.device
        for layer in self.layers:
            layer.index = idx.to(device)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.index = None


def combine(files: Sequence[AdapterFile], weights: Sequence[float], name: str = "mix") -> AdapterFile:
    """One LoRA adapter equal to the weighted sum of several: sum_i w_i (alpha_i / r_i) B_i A_i, exactly, as
    their A stacked along the rank and their B side by side with the scalings folded in (rank = the sum of
    the ranks, alpha = rank so the scaling is 1). A layer an adapter does not touch gets zeros for it."""
    if len(files) != len(weights) or not files:
        raise ValueError(f"{len(files)} adapters and {len(weights)} weights: give one weight per adapter")
    for f in files:
        if f.kind != "LORA" or f.saved:
            raise ValueError(f"{f.path}: only LoRA adapters without modules_to_save can be combined")
    R = sum(f.r for f in files)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for layer in sorted({n for f in files for n in f.parts}):
        some = next(f.parts[layer] for f in files if layer in f.parts)
        in_f, out_f = some["lora_A"].shape[1], some["lora_B"].shape[0]
        As, Bs = [], []
        for f, w in zip(files, weights, strict=True):
            p = f.parts.get(layer)
            As.append(p["lora_A"].float() if p else torch.zeros(f.r, in_f))
            Bs.append(p["lora_B"].float() * (w * f.alpha / f.r) if p else torch.zeros(out_f, f.r))
        parts[layer] = {"lora_A": torch.cat(As, 0), "lora_B": torch.cat(Bs, 1)}  # [R, in], [out, R]
    return AdapterFile("LORA", {"r": R, "lora_alpha": R}, parts, set(), Path(name))
