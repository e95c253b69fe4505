"""LoRA: a frozen weight plus a trainable low-rank update (Hu et al., 2021, "LoRA: Low-Rank Adaptation").

A chosen linear layer W (out x in) becomes  y = W x + (alpha / r) B A x,  with A (r x in) and B (out x r),
r much smaller than in and out. B starts at zero, so training starts from the base model exactly; only A
and B get gradients, so the optimizer keeps state for r (in + out) numbers per layer instead of in x out.
After training the update can be merged into W (W + (alpha / r) B A): the merged model has the base
model's shape and speed. Unmerging subtracts it again.

The wrapped layer is any module with a ``weight`` of shape [out, in] (a groundup Linear, nn.Linear), or a
weight-only quantized layer (nn/qlinear.py: NF4 for QLoRA, Dettmers et al. 2023; int4/int8), which stays frozen
in its codes; merging then dequantizes it (merge_quantized). LoRA only adds to its output.
Parameter names follow the peft library (``base_layer``, ``lora_A.weight``, ``lora_B.weight``) so
adapters translate to its format by renaming modules only.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..nn.qlinear import QUANTIZED, io_shape, is_linear, replace_module
from ..nn.qspec import spec_of


def matches_targets(targets: Sequence[str] | str | None, name: str) -> bool:
    """peft's rule for which modules an adapter covers: a string is a regular expression over the whole
    module name, a list holds name suffixes ("q_proj" matches "blocks.3.attn.q_proj")."""
    if not targets:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def module_patterns(patterns: Sequence[str] | str | None) -> list[str] | str | None:
    """modules_to_save as given (one regex, or a list of name suffixes), None when empty."""
    if patterns is None or isinstance(patterns, str):
        return patterns or None
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"modules_to_save={patterns!r} must be module names (or one regex), e.g. ['embed']")
    return list(patterns) or None


@dataclass
class LoraConfig:
    """Which layers get an adapter and its size. ``target_modules``: a list of module-name suffixes
    (``"q_proj"`` matches ``blocks.3.attn.q_proj``) or one regular expression that must match the whole
    module name, as in peft. ``modules_to_save``: whole modules trained with the adapter and saved in its
    folder (peft's option of that name), e.g. ``["embed", "lm_head"]`` to teach the model new tokens.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Sequence[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    modules_to_save: Sequence[str] | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r={self.r!r} must be a positive integer")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha={self.alpha} must be > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError("target_modules is empty: name at least one module, e.g. ['q_proj', 'v_proj']")
        self.modules_to_save = module_patterns(self.modules_to_save)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def matches(self, name: str) -> bool:
        """Whether the module called ``name`` is a target."""
        return matches_targets(self.target_modules, name)

    def to_dict(self) -> dict:
        return asdict(self)


class Wrapper(nn.Module):
    """An adapter layer around ``base_layer``: ``weight`` and ``bias`` read through to it, so code that reads
    a projection's weight (shapes, dtypes, tied heads) works on the wrapped layer too."""

    base_layer: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)


class LoraLinear(Wrapper):
    """base_layer(x) + scaling * lora_B(lora_A(dropout(x))); see the module docstring."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        out_f, in_f = io_shape(base_layer)  # a quantized weight holds codes, not [out, in]
        self.base_layer = base_layer
        w = base_layer.weight
        # fp32 adapters over a bf16/fp16 or quantized base, as peft's autocast_adapter_dtype: AdamW on 16-bit
        # adapter weights would lose the small updates
        dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Linear(in_f, r, bias=False, device=w.device, dtype=dtype)  # weight [r, in]
        self.lora_B = nn.Linear(r, out_f, bias=False, device=w.device, dtype=dtype)  # weight [out, r]
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.merged = False
        self.disabled = False  # adapters_disabled(): the base layer alone (a reference model for alignment)
        self.reset_lora()

    @property
    def in_features(self) -> int:
        return self.lora_A.in_features

    @property
    def out_features(self) -> int:
        return self.lora_B.out_features

    def reset_lora(self) -> None:
        """A as nn.Linear initialises it (Kaiming uniform, as peft does), B = 0: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A  [out, in], in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y
        a = self.lora_A.weight
        # scaled in the adapter's dtype, then cast (as peft does: the same bf16 sum over a 4-bit base)
        return y + (self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))) * self.scaling).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: same outputs, no extra work per token."""
        if isinstance(self.base_layer, QUANTIZED):
            raise ValueError("the base layer is quantized: its codes cannot take the update; merge_and_unload(model) "
                             "gives float layers, merge_quantized(model, requantize=True) quantized ones")
        if not self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() + self.delta_weight()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again (to keep training, or switch adapters)."""
        if self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() - self.delta_weight()).to(w.dtype))
            self.merged = False


def saved_module_names(model: nn.Module, patterns: Sequence[str] | str, targets: Sequence[str]) -> list[str]:
    """The modules ``patterns`` names (suffixes or one regex, as target_modules; the outermost of nested
    matches), checked: each must hold parameters, share none with an adapter target, and not be one half of a
    tied embedding / output head pair (training one would change both, which peft's separate copy does not)."""
    names = [n for n, _ in model.named_modules() if n and matches_targets(patterns, n)]
    if not names:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if n and any(True for _ in m.parameters(recurse=False))})
        raise ValueError(f"modules_to_save={patterns!r} matches no module of this model; its modules with "
                         f"weights end in: {', '.join(leaves)}")
    names = [n for n in names if not any(n.startswith(o + ".") for o in names)]
    # the model's own tying (tied_keys: {alias: source}), both ways, by module: lm_head <-> embed, mlm_head...
    tied = {a.rpartition(".")[0]: b.rpartition(".")[0] for a, b in getattr(model, "tied_keys", dict)().items()}
    tied.update({b: a for a, b in list(tied.items())})
    for n in names:
        if not any(True for _ in model.get_submodule(n).parameters()):
            raise ValueError(f"modules_to_save: {n!r} has no parameters to train")
        clash = next((t for t in targets if t == n or t.startswith(n + ".") or n.startswith(t + ".")), None)
        if clash is not None:
            raise ValueError(f"modules_to_save: {n!r} overlaps the adapter target {clash!r}; a module is either "
                             "adapted or trained whole, not both")
        partner = next((tied[m] for m in tied if m == n or m.startswith(n + ".")), None)
        if partner is not None:
            raise ValueError(f"modules_to_save: {n!r} is tied to {partner} in this model; training it would change "
                             "both, so it is refused (untie the model first)")
    return names


def train_whole(model: nn.Module, names: Sequence[str]) -> None:
    """Make the named modules trainable in place and record them as ``model.modules_to_save``: the adapter
    folder then carries their weights (the base checkpoint on disk is not changed)."""
    for n in names:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)
    model.modules_to_save = sorted(names)


def wrap_targets(model: nn.Module, config, *, quantized: bool = True) -> list[str]:
    """The names of the linear layers ``config.matches``, after checking them all, then every parameter of
    the model frozen except the config's ``modules_to_save``. Raises ValueError, before changing anything,
    when nothing matches, a match is not a plain linear layer (or already wrapped), or the target is a head
    tied to the embeddings, or a module to save is wrong (saved_module_names)."""
    names = [n for n, _ in model.named_modules() if n and config.matches(n)]
    linears = {n for n, m in model.named_modules() if is_linear(m)}
    if not names:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(f"target_modules={config.target_modules!r} matches no module of this model; its linear "
                         f"layers end in: {', '.join(suffixes)}")
    wrong = [n for n in names if n not in linears]
    if wrong:
        raise ValueError(f"target_modules={config.target_modules!r} matches {wrong[0]!r}, which is a "
                         f"{type(model.get_submodule(wrong[0])).__name__}, not a linear layer")
    coded = next((n for n in names if isinstance(model.get_submodule(n), QUANTIZED)), None)
    if coded is not None and not quantized:
        raise ValueError(f"{coded} is quantized: this method changes the weight it merges into, which 4/8-bit codes "
                         "cannot hold; use LoRA (QLoRA) on a quantized model")
    if getattr(model, "lm_head", None) is not None and "lm_head" in names and getattr(model.config, "tie_embeddings",
                                                                                        False):
        raise ValueError("lm_head is tied to the input embeddings: a LoRA on it would change both; leave it out")
    to_save = getattr(config, "modules_to_save", None)
    saved = saved_module_names(model, to_save, names) if to_save else []
    for p in model.parameters():
        p.requires_grad_(False)
    if saved:
        train_whole(model, saved)
    return names


def apply_lora(model: nn.Module, config: LoraConfig | None = None, **kwargs) -> nn.Module:
    """Freeze every weight of ``model`` and wrap each target linear layer in a LoraLinear (in place);
    returns the model, whose only trainable parameters are then the A and B matrices.

    ``apply_lora(model, r=8, alpha=16, target_modules=["q_proj", "v_proj"])`` or with a LoraConfig.
    Raises ValueError, before changing anything, when no module matches the targets or a match is not
    a linear layer.
    """
    config = config or LoraConfig(**kwargs)
    for name in wrap_targets(model, config):
        replace_module(model, name, LoraLinear(model.get_submodule(name), config.r, config.alpha, config.dropout))
    model.lora_config = config
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its frozen base (every LoRA update skipped), so one copy of the
    weights serves as both the trained policy and its reference (peft's ``disable_adapter``). A merged
    adapter cannot be skipped: refused."""
    layers = list(lora_layers(model).values())
    if any(m.merged for m in layers):
        raise ValueError("adapters_disabled: the LoRA update is merged into the base weights; unmerge_lora first")
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The model's LoRA-wrapped layers by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    """Adapter layers of any kind (LoRA, IA3): modules wrapping a ``base_layer`` that can merge into it."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "base_layer") and hasattr(m, "merge")}


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter (LoRA or IA3) into its base weight: outputs unchanged, no per-token cost."""
    for layer in _wrappers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every merged adapter out of its base weight again."""
    for layer in _wrappers(model).values():
        layer.unmerge()
    return model


@torch.no_grad()
def merge_quantized(model: nn.Module, *, requantize: bool = False, measure: bool = True
                    ) -> dict[str, dict[str, float]]:
    """Merge LoRA layers over quantized bases (QLoRA) and unwrap them: W' = dequantize(W) + scaling B A. Without
    ``requantize`` the model becomes a float one: W' and every other quantized layer dequantized to nn.Linear in
    the base's weight dtype (bf16 for a QLoRA base). With it, W' is quantized again the way W was (the model
    stays quantized and saves in the same format). Returns per merged layer the relative size of the update,
    |BA| / |W|, and the error requantizing introduces (or would introduce, when kept float), |Q(W') - W'| / |W'|;
    Frobenius norms (None for GPTQ/AWQ layers, which only calibration requantizes, and when kept float without
    ``measure``: then no layer is quantized just to measure)."""
    report = {}
    merged = {n: m for n, m in lora_layers(model).items() if isinstance(m.base_layer, QUANTIZED)}
    calibrated = next((n for n, m in merged.items() if spec_of(m.base_layer) is None), None)
    if requantize and calibrated is not None:
        raise ValueError(f"{calibrated} is a calibrated (GPTQ/AWQ) layer: requantizing needs calibration again; merge "
                         "to float (requantize=False) and quantize the merged model with GPTQ/AWQ")
    others = {} if requantize else {n: m for n, m in model.named_modules()
                                    if isinstance(m, QUANTIZED) and not n.endswith(".base_layer")}
    for name, layer in [*merged.items(), *others.items()]:
        base = layer.base_layer if name in merged else layer
        w = base.dequantize(torch.float32)
        delta = layer.delta_weight() if name in merged else torch.zeros_like(w)
        lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=w.device,
                        dtype=getattr(base, "weight_dtype", torch.bfloat16))
        lin.weight.copy_(w + delta)
        if base.bias is not None:
            lin.bias.copy_(base.bias)
        replace_module(model, name, lin.requires_grad_(False))
        if name not in merged:
            continue
        report[name] = {"update": float(delta.norm() / w.norm().clamp(min=1e-30)), "requantize_error": None}
        spec = spec_of(base)
        if spec is None or not (requantize or measure):
            continue
        again = spec.make(lin)
        if requantize:
            replace_module(model, name, again)
        again_w = again.dequantize(torch.float32)
        report[name]["requantize_error"] = float((again_w - w - delta).norm() / (w + delta).norm().clamp(min=1e-30))
    if not requantize:
        model.quantization = None
    return report


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put the plain base layers back: the model is an ordinary one again (saveable with
    save_pretrained, loadable by transformers). Quantized bases become float layers (merge_quantized)."""
    merge_quantized(model, measure=False)
    for name, layer in _wrappers(model).items():
        layer.merge()
        replace_module(model, name, layer.base_layer)
    model.lora_config = model.ia3_config = None  # the adapter settings are gone with the adapter
    model.modules_to_save = []
    return model
