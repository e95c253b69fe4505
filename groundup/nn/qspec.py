"""A model's quantization as a typed record: one class per format, each knowing the layer it builds from a float
linear layer (or empty, for a checkpoint to fill), the layers it covers, and how it is written in a groundup
folder's ``quantization_config``. ``model.quantization`` is one of these (None for a float model).

    Int8Spec   absmax per output row (Int8Linear)
    Int4Spec   asymmetric groups of ``group_size`` inputs (Int4Linear); ``int8_modules`` fall back to Int8
    NF4Spec    QLoRA's NF4 / FP4 blocks (NF4Linear), the bitsandbytes format transformers reads
    GPTQSpec   codes from calibration (GPTQ, AWQ) in GPTQ's checkpoint layout (GPTQLinear)
    GGUFSpec   llama.cpp's block formats as a GGUF file stores them, one type per layer (GGUFLinear)

``swap_in`` puts a spec's layers into a model; ``spec_of`` tells the settings a layer was made with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..kernels.ggml_quants import TYPE_IDS, quantize
from . import nf4
from .gguf_linear import GGUFLinear
from .gptq_linear import GPTQLinear
from .qlinear import GROUP_SIZES, Int4Linear, Int8Linear, NF4Linear, replace_module


@dataclass(frozen=True)
class QuantSpec:
    """The layers a quantization covers; subclasses add the format's settings."""

    modules: tuple[str, ...] = ()
    bits: ClassVar[int] = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))

    def replace(self, **changes: Any) -> QuantSpec:
        return dataclasses.replace(self, **changes)

    def make(self, lin: nn.Module, convert: bool = True) -> nn.Module:
        """The quantized layer in place of ``lin`` (anything with ``weight``, ``bias``, ``in_features``,
        ``out_features``): its weights quantized (``convert``) or empty on lin's device (a checkpoint fills it)."""
        raise NotImplementedError

    def layer(self, name: str) -> QuantSpec:
        """The spec of one covered layer (an int8 fallback layer of an int4 model gets int8's)."""
        return self

    def covered(self) -> tuple[str, ...]:
        """Every layer this spec replaces."""
        return self.modules

    def check(self, name: str, lin: nn.Linear) -> None:
        """Raise ValueError if layer ``name`` cannot take this format."""

    def to_json(self) -> dict[str, Any]:
        """groundup's quantization_config body (read back by ``from_json``)."""
        return {"bits": self.bits, **{f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                                      for f in dataclasses.fields(self)}}


@dataclass(frozen=True)
class Int8Spec(QuantSpec):
    def make(self, lin: nn.Module, convert: bool = True) -> nn.Module:
        if convert:
            return Int8Linear.from_linear(lin)
        return Int8Linear(lin.in_features, lin.out_features, lin.bias is not None, device=lin.weight.device)


@dataclass(frozen=True)
class Int4Spec(QuantSpec):
    group_size: int = 64
    int8_modules: tuple[str, ...] = ()
    bits: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "int8_modules", tuple(self.int8_modules))

    def make(self, lin: nn.Module, convert: bool = True) -> nn.Module:
        if convert:
            return Int4Linear.from_linear(lin, self.group_size)
        return Int4Linear(lin.in_features, lin.out_features, lin.bias is not None, group_size=self.group_size,
                          device=lin.weight.device)

    def layer(self, name: str) -> QuantSpec:
        return Int8Spec() if name in self.int8_modules else self

    def covered(self) -> tuple[str, ...]:
        return (*self.int8_modules, *self.modules)

    def check(self, name: str, lin: nn.Linear) -> None:
        if name in self.modules and lin.in_features % self.group_size:
            raise ValueError(f"{name}: group_size={self.group_size} does not divide its input width "
                             f"{lin.in_features}; pick a group size dividing it ({', '.join(map(str, GROUP_SIZES))})")


@dataclass(frozen=True)
class NF4Spec(QuantSpec):
    quant_type: str = "nf4"
    blocksize: int = 64
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    bits: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_type not in nf4.QUANT_TYPES:
            raise ValueError(f"quant_type={self.quant_type!r} must be one of {', '.join(nf4.QUANT_TYPES)}")

    def make(self, lin: nn.Module, convert: bool = True) -> nn.Module:
        opts = dict(quant_type=self.quant_type, blocksize=self.blocksize, double_quant=self.double_quant,
                    compute_dtype=getattr(torch, self.compute_dtype))
        if convert:
            return NF4Linear.from_linear(lin, **opts)
        return NF4Linear(lin.in_features, lin.out_features, lin.bias is not None, weight_dtype=lin.weight.dtype,
                         device=lin.weight.device, **opts)


@dataclass(frozen=True)
class GPTQSpec(QuantSpec):
    """Calibrated codes (quant.gptq / quant.awq) in GPTQ's layout; ``group_size`` -1 is one group a row."""

    bits: int = 4  # type: ignore[misc]  # a field here: GPTQ stores 2, 3, 4 or 8 bits
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"
    damp_percent: float = 0.01
    quantizer: str = "gptq"  # or "awq": who chose the codes (the layout is the same)

    def make(self, lin: nn.Module, convert: bool = True) -> nn.Module:
        if convert:
            raise ValueError("GPTQ layers come from calibration: groundup.quant.quantize_gptq or quantize_awq")
        group = self.group_size if self.group_size > 0 else lin.in_features
        return GPTQLinear(lin.in_features, lin.out_features, lin.bias is not None, bits=self.bits, group_size=group,
                          checkpoint_format=self.checkpoint_format, device=lin.weight.device)

    def to_json(self) -> dict[str, Any]:
        """GPTQ's quantization_config, as transformers and GPTQModel read it."""
        return {"quant_method": "gptq", "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "sym": self.sym, "checkpoint_format": self.checkpoint_format, "damp_percent": self.damp_percent,
                "true_sequential": False, "static_groups": False}


@dataclass(frozen=True)
class GGUFSpec(QuantSpec):
    """Layers kept in a GGUF file's block formats: ``types[i]`` is the ggml type of ``modules[i]``. They are
    written by ``save_gguf`` (unchanged); a groundup folder does not hold them."""

    types: tuple[str, ...] = ()
    bits: ClassVar[int] = 0  # varies by layer: see types

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "types", tuple(self.types))
        if len(self.types) != len(self.modules):
            raise ValueError(f"GGUFSpec: {len(self.modules)} modules but {len(self.types)} types")

    def make(self, lin: nn.Module, convert: bool = True) -> nn.Module:
        kind = self.types[0] if self.types else "Q8_0"
        layer = GGUFLinear(lin.in_features, lin.out_features, kind, bias=lin.bias is not None, device=lin.weight.device)
        if convert:  # ggml_quants.quantize names the formats it writes when it is asked for another
            raw = quantize(lin.weight.detach().reshape(-1), TYPE_IDS[kind])
            layer.blocks.copy_(raw.view(lin.out_features, -1))
            if lin.bias is not None:
                layer.bias.data.copy_(lin.bias.detach())
        return layer

    def to_json(self) -> dict[str, Any]:
        raise ValueError("layers in GGUF block formats are saved with save_gguf (a .gguf file); to write an HF "
                         "folder, load the file with from_pretrained(path, dequantize=True)")


def from_json(q: dict[str, Any]) -> QuantSpec:
    """A groundup quantization_config body (``to_json``) as its record; ValueError naming what is wrong."""
    body = {k: v for k, v in q.items() if k not in ("quant_method", "bits")}
    if q.get("quant_type"):
        body.pop("group_size", None)
        return NF4Spec(**body)
    if q.get("bits") == 8:
        return Int8Spec(modules=body.get("modules", ()))
    if q.get("bits") == 4:
        return Int4Spec(**{k: v for k, v in body.items() if v is not None})
    raise ValueError(f"bits={q.get('bits')!r} must be 8 or 4")


def linear_of(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear (no bias) holding ``weight`` [out, in] as it is, no copy: a weight read from a file, handed to
    ``QuantSpec.make`` as the layer it belongs to."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


def swap_in(model: nn.Module, spec: QuantSpec, *, convert: bool = True) -> nn.Module:
    """Replace the layers ``spec`` covers by quantized ones, in place, and set ``model.quantization``. ``convert``
    quantizes the current weights; without it empty layers are made on the weights' device (meta, to be filled
    by a checkpoint load). Every name is checked before the first layer changes."""
    modules = dict(model.named_modules())
    for name in spec.covered():
        lin = modules.get(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"quantization module {name!r} is not a linear layer of this model")
        spec.check(name, lin)
    for name in spec.covered():
        replace_module(model, name, spec.layer(name).make(model.get_submodule(name), convert))
    model.quantization = spec
    return model


def spec_of(layer: nn.Module) -> QuantSpec | None:
    """The settings a quantized layer was made with (to quantize a new weight the same way); None for a
    calibrated (GPTQ/AWQ) layer, which the weight alone cannot reproduce."""
    if isinstance(layer, NF4Linear):
        return NF4Spec(quant_type=layer.quant_type, blocksize=layer.blocksize, double_quant=layer.double_quant,
                       compute_dtype=str(layer.compute_dtype).removeprefix("torch."))
    if isinstance(layer, Int4Linear):
        return Int4Spec(group_size=layer.group_size)
    if isinstance(layer, GPTQLinear | GGUFLinear):
        return None
    return Int8Spec()
