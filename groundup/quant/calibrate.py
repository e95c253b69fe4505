"""Calibration for GPTQ and AWQ: token windows from text files, and a model's blocks run one at a time over them
(each block's inputs are the previous, already quantized, block's outputs, as both papers do), with the inputs
of its linear layers collected by hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..nn.qlinear import quantizable


def calibration_ids(files: Sequence[str | Path], tokenizer, *, samples: int = 128, seqlen: int = 512,
                    seed: int = 0) -> torch.Tensor:
    """``samples`` windows of ``seqlen`` tokens [samples, seqlen], non-overlapping and drawn at random from the
    concatenated token ids of ``files``. Too little text is an error naming what was found and what is needed."""
    if samples < 1 or seqlen < 2:
        raise ValueError(f"samples={samples} must be >= 1 and seqlen={seqlen} >= 2")
    ids: list[int] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} does not exist")
        ids += tokenizer.encode(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)
    windows = len(ids) // seqlen
    if windows < samples:
        raise ValueError(f"calibration data too short: {', '.join(map(str, files))} hold {len(ids):,} tokens, "
                         f"{windows} windows of {seqlen}; {samples} samples need {samples * seqlen:,} tokens. Give "
                         "more text (--calib FILE ...), or fewer --samples, or a shorter --seqlen")
    pick = torch.randperm(windows, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    t = torch.tensor(ids[: windows * seqlen]).view(windows, seqlen)
    return t[pick]


def block_linears(model: nn.Module, i: int) -> dict[str, nn.Linear]:
    """The float linear layers of block i by full module name (those weight-only quantization replaces)."""
    prefix = f"blocks.{i}."
    return {n: model.get_submodule(n) for n in quantizable(model) if n.startswith(prefix)}


class Calibration:
    """The blocks of ``model`` (a CausalLM) run one at a time over calibration ids [N, T], in micro-batches.

    ``inputs`` holds the current block's inputs [N, T, C]: block i's once ``advance`` has passed blocks 0..i-1."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, micro_batch: int = 8) -> None:
        self.model, self.micro = model, micro_batch
        norm = getattr(model, "embed_norm", None)
        with torch.no_grad():
            parts = [model.inputs(model.embed, ids[j:j + micro_batch], norm=norm)
                     for j in range(0, ids.shape[0], micro_batch)]  # (x [micro, T, C], rope) each
            self.run: Callable[[int, torch.Tensor], torch.Tensor] = model.block_runner(*parts[0])
            self.inputs = torch.cat([x for x, _ in parts]).to(model.embed.weight.dtype)

    def forward(self, i: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """Block i over inputs x (default: the current inputs), in micro-batches."""
        x = self.inputs if x is None else x
        with torch.no_grad():
            return torch.cat([self.run(i, x[j:j + self.micro]) for j in range(0, x.shape[0], self.micro)])

    def hessians(self, i: int, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """H = 2/n sum x x^T over the n calibration tokens reaching each named linear layer of block i, fp32
        [in, in]. Layers that read the same input (q, k and v) share one product."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(name: str):
            def take(_module, args):
                x = args[0].detach()
                key = x.data_ptr()
                if key not in memo:  # x is kept with its product, so no later tensor can take its address
                    flat = x.reshape(-1, x.shape[-1]).float()  # [tokens, in]
                    memo[key] = (x, flat.t() @ flat)
                sums[name] = sums.get(name, 0) + memo[key][1]
                counts[name] = counts.get(name, 0) + x.numel() // x.shape[-1]
            return take

        handles = [self.model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
        try:
            with torch.no_grad():
                for j in range(0, self.inputs.shape[0], self.micro):
                    memo.clear()
                    self.run(i, self.inputs[j:j + self.micro])
        finally:
            for h in handles:
                h.remove()
        return {n: 2.0 * sums[n] / counts[n] for n in names if n in sums}

    def advance(self, i: int) -> None:
        """Replace the inputs by block i's outputs (run with its layers as they are now: quantized)."""
        self.inputs = self.forward(i)
