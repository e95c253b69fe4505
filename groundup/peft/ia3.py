"""IA3: learned rescaling of keys, values and the feed-forward activations (Liu et al., 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning").

Each adapted projection gets one vector l, initialised to ones (so training starts from the base model):
an attention projection's output is multiplied by l (one number per output feature: keys and values are
rescaled per channel), a feed-forward projection's input is (the activations between the two FFN
matrices). That is d_kv + d_kv + d_ff numbers per layer, the fewest of the course's methods. Merging
multiplies the weight's rows (output scaling) or columns (input scaling) by l.

Layer and parameter names follow the peft library (``base_layer``, ``ia3_l``; the shapes [out, 1] and
[1, in] too) so adapters translate by renaming modules only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..nn.qlinear import replace_module
from .lora import Wrapper, matches_targets, module_patterns, wrap_targets


@dataclass
class IA3Config:
    """``target_modules``: name suffixes (or one regex) of the projections to rescale; those also in
    ``feedforward_modules`` are rescaled on their input (the FFN activation), the rest on their output."""

    target_modules: Sequence[str] | str = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward_modules: Sequence[str] | str = field(default_factory=lambda: ["down_proj"])
    modules_to_save: Sequence[str] | str | None = None  # whole modules trained too, as LoraConfig's

    def __post_init__(self) -> None:
        self.modules_to_save = module_patterns(self.modules_to_save)
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError("target_modules is empty: name at least one module, e.g. ['k_proj', 'v_proj']")

    def matches(self, name: str) -> bool:
        return matches_targets(self.target_modules, name)

    def is_feedforward(self, name: str) -> bool:
        return matches_targets(self.feedforward_modules, name)

    def to_dict(self) -> dict:
        return asdict(self)


class IA3Linear(Wrapper):
    """base_layer(x) * l (output scaling) or base_layer(x * l) (input scaling, feed-forward layers)."""

    def __init__(self, base_layer: nn.Module, feedforward: bool) -> None:
        super().__init__()
        out_f, in_f = base_layer.weight.shape
        self.base_layer, self.feedforward, self.merged = base_layer, feedforward, False
        w = base_layer.weight
        shape = (1, in_f) if feedforward else (out_f, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, device=w.device, dtype=w.dtype if w.is_floating_point()
                                             else torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        scale = self.ia3_l.flatten()
        if self.feedforward:
            return self.base_layer(x * scale.to(x.dtype))
        y = self.base_layer(x)
        return y * scale.to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold l into the weight (rows, or columns for input scaling); an output-scaled bias is scaled too."""
        if self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() * self.ia3_l.float()).to(w.dtype))  # [out, 1] or [1, in] broadcasts over W
        b = self.bias
        if b is not None and not self.feedforward:
            b.copy_((b.float() * self.ia3_l.float().flatten()).to(b.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() / self.ia3_l.float()).to(w.dtype))
        b = self.bias
        if b is not None and not self.feedforward:
            b.copy_((b.float() / self.ia3_l.float().flatten()).to(b.dtype))
        self.merged = False


def apply_ia3(model: nn.Module, config: IA3Config | None = None, **kwargs) -> nn.Module:
    """Freeze every weight of ``model`` and wrap each target projection in an IA3Linear (in place); the
    IA3 vectors are then the only trainable parameters. Errors as apply_lora's, before anything changes."""
    config = config or IA3Config(**kwargs)
    names = wrap_targets(model, config, quantized=False)
    for name in names:
        replace_module(model, name, IA3Linear(model.get_submodule(name), config.is_feedforward(name)))
    model.ia3_config = config
    return model


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}
