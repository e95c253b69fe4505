"""Weight-only quantized linear layers: int8 per output channel, int4 in groups (groundup.quant makes them).

Int8Linear (absmax per output row): w ~ q * s, q in [-127, 127], s = max|w_row| / 127.
Int4Linear (asymmetric per group of `group_size` inputs, the round-to-nearest scheme of GPTQ's baseline and
of llama.cpp's Q4_1): w ~ q * s + m, q in [0, 15], s = (max - min) / 15, m = min.

Both keep nn.Linear's interface and module names, so a quantized model is the same model with some layers
swapped (house rule 3). State-dict tensors: ``weight`` (int8 [out, in]; for int4 uint8 [out, in / 2], two
codes a byte, the even column in the low nibble), ``weight_scale`` (bf16 [out] or [out, in / group]) and,
for int4, ``weight_min`` (bf16 [out, in / group]); ``bias`` as in nn.Linear. The scales are bf16 because the
kernels take them so: every path then multiplies by the same numbers.

Products: torch's CPU kernels ``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu`` read the codes
directly and want bf16 activations (fp32 ones run them many times slower), so x is cast around them; the
alternative is to dequantize and use a GEMM (bf16, or fp32 on CPUs without bf16 arithmetic), which wins
for many rows (prefill). Which one runs is measured per shape by nn/autotune.py. Kernel-layout int4 weights
are derived at load, not stored.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import autotune

GROUP_SIZES = (32, 64, 128)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (codes int8 [out, in], scales bf16 [out]); w ~ codes * scales[:, None]."""
    scale = (w.float().abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
    q = (w.float() / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] -> (codes uint8 [out, in] in 0..15, scales bf16 [out, in / g], minima bf16 [out, in / g]).

    The bf16 scale and minimum are the ones the codes are computed against, so dequantization with them
    reproduces the rounding exactly."""
    out_f, in_f = w.shape
    if group_size not in GROUP_SIZES or in_f % group_size:
        raise ValueError(f"group_size={group_size} must be one of {GROUP_SIZES} and divide the input width {in_f}")
    g = w.float().reshape(out_f, in_f // group_size, group_size)  # [out, groups, g]
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16)
    low = lo.to(torch.bfloat16)
    q = ((g - low.float()[..., None]) / scale.float()[..., None]).round().clamp(0, 15)
    return q.to(torch.uint8).reshape(out_f, in_f), scale, low


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes uint8 [out, in] (0..15) -> bytes [out, in / 2]: column 2j in the low nibble, 2j + 1 in the high."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: [out, in / 2] -> [out, in] codes."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


class Int8Linear(nn.Module):
    """y = x (q s)^T + b with int8 codes q [out, in] and per-row scales s."""

    bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.bfloat16, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, device=lin.weight.device)
        q.weight, q.weight_scale = quantize_int8(lin.weight.detach())
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        return q

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, rows: slice = slice(None)) -> torch.Tensor:
        """The weight these codes stand for, [out, in] (or the output rows ``rows`` of it)."""
        return (self.weight[rows].float() * self.weight_scale[rows].float()[:, None]).to(dtype)

    def _product(self, name: str, x: torch.Tensor) -> torch.Tensor:  # x [M, in] bf16
        if name == "int8mm":
            return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.weight_scale.to(torch.bfloat16))
        return _dequant_product(name, x, self.dequantize, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dispatch(self, x, ("int8mm", "dequant", "dequant32") if x.device.type == "cpu" else ("dequant",))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class Int4Linear(nn.Module):
    """y = x (q s + m)^T + b with 4-bit codes q and a scale s and minimum m per group of inputs."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group_size: int = 64,
                 device=None) -> None:
        super().__init__()
        if group_size not in GROUP_SIZES or in_features % group_size:
            raise ValueError(f"group_size={group_size} must be one of {GROUP_SIZES} and divide in_features="
                             f"{in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.bfloat16, device=device))
        self.register_buffer("weight_min", torch.zeros(out_features, groups, dtype=torch.bfloat16, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._kernel: tuple | None = None  # (packed for the CPU kernel, scales_and_zeros), built on first use

    @classmethod
    def from_linear(cls, lin: nn.Linear, group_size: int = 64) -> Int4Linear:
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size=group_size,
                device=lin.weight.device)
        codes, q.weight_scale, q.weight_min = quantize_int4(lin.weight.detach(), group_size)
        q.weight = pack_int4(codes)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        return q

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, rows: slice = slice(None)) -> torch.Tensor:
        """The weight these codes stand for, [out, in] (or the output rows ``rows`` of it)."""
        codes = unpack_int4(self.weight[rows]).float()
        codes = codes.view(codes.shape[0], -1, self.group_size)  # [rows, groups, g]
        w = codes * self.weight_scale[rows].float()[..., None] + self.weight_min[rows].float()[..., None]
        return w.reshape(-1, self.in_features).to(dtype)

    @property
    def has_kernel(self) -> bool:
        """Whether torch's int4 CPU kernel serves this layer: it packs output rows in 16s."""
        return self.out_features % 16 == 0

    def prepare(self) -> None:
        """Build the kernel layout now, if the kernel serves this layer (a compiled step must find it built:
        tracing cannot cache it)."""
        if self.has_kernel:
            self._kernel_weights()

    def _kernel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's int4 CPU layout, derived from the stored codes (kept until the codes change)."""
        if self._kernel is None or self._kernel[0] is not self.weight:
            # in blocks of 64 output rows (the layout's own unit) so the int32 codes the conversion takes stay
            # small: a whole 32k x 768 head would hold 98 MB of them
            step = max(64, CHUNK_BYTES // (4 * self.in_features) // 64 * 64)
            if self.out_features % 64:
                step = self.out_features
            packed = torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                unpack_int4(self.weight[r:r + step]).to(torch.int32), 8) for r in range(0, self.out_features, step)])
            # the kernel computes (q - 8) s + z: z is the value of the middle code
            zeros = self.weight_min.float() + 8 * self.weight_scale.float()
            sz = torch.stack((self.weight_scale.float(), zeros), dim=-1).transpose(0, 1)  # [groups, out, 2]
            self._kernel = (self.weight, packed, sz.contiguous().to(torch.bfloat16))
        return self._kernel[1], self._kernel[2]

    def _product(self, name: str, x: torch.Tensor) -> torch.Tensor:  # x [M, in] bf16
        if name == "int4mm":
            packed, sz = self._kernel_weights()
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, self.group_size, sz)
        return _dequant_product(name, x, self.dequantize, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = ("int4mm",) if self.has_kernel else ()
        return _dispatch(self, x, (*kernel, "dequant", "dequant32") if x.device.type == "cpu" else ("dequant",))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
                f"group_size={self.group_size}")


CHUNK_BYTES = 8 * 2**20  # float weight rows dequantized at a time: the copy stays small beside the codes


def _dequant_product(name: str, x: torch.Tensor, dequantize, out_features: int) -> torch.Tensor:
    """x [M, in] bf16 times the dequantized weight: in bf16 ("dequant"), or in fp32 ("dequant32"), which wins on
    CPUs without native bf16 arithmetic (AVX2 only: there bf16 GEMMs run several times slower than fp32). The
    weight is dequantized a block of output rows at a time, so no float copy of a whole matrix (a 32k x 768
    lm_head: 98 MB in fp32) is ever held."""
    dtype = torch.float32 if name == "dequant32" else torch.bfloat16
    xs = x.to(dtype)
    step = max(1, CHUNK_BYTES // (4 * x.shape[1]))
    parts = [F.linear(xs, dequantize(dtype, slice(r, r + step))) for r in range(0, out_features, step)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).to(torch.bfloat16)  # [M, out]


def _dispatch(layer: Int8Linear | Int4Linear, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Run the fastest measured product on x [.., in] in bf16; the result in x's dtype, bias added."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layer.in_features).to(torch.bfloat16).contiguous()  # [M, in]: the kernels want rows
    if torch.compiler.is_compiling():  # a traced (decode) step times nothing: the kernel, the one-row choice
        y = layer._product(names[0], x2)
    else:
        key = ("qlinear", layer.bits, autotune.bucket(x2.shape[0]), layer.in_features, layer.out_features,
               getattr(layer, "group_size", 0), torch.get_num_threads(), x.device.type)
        name, out = autotune.choose(key, lambda: [(n, partial(layer._product, n, x2)) for n in names])
        y = out if out is not None else layer._product(name, x2)
    y = y.to(x.dtype)
    if layer.bias is not None:
        y = y + layer.bias.to(x.dtype)
    return y.reshape(*lead, layer.out_features)


QUANTIZED = (Int8Linear, Int4Linear)


def quantizable(model: nn.Module, *, include_head: bool = False) -> list[str]:
    """Names of the linear layers weight-only quantization replaces: every nn.Linear in the blocks (attention,
    MLP, experts), and the lm_head when asked (tied or not: quant.quantize unties a tied one first)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    if include_head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        names.append("lm_head")
    return names


def swap_in(model: nn.Module, spec: dict, *, convert: bool = True) -> nn.Module:
    """Replace the layers named in spec["modules"] by Int8Linear / Int4Linear (spec["bits"], spec["group_size"])
    and those in spec.get("int8_modules") by Int8Linear, in place. ``convert`` quantizes the current weights;
    without it empty layers are made on the weights' device (meta, to be filled by a checkpoint load)."""
    if spec.get("int8_modules"):
        swap_in(model, {"bits": 8, "modules": spec["int8_modules"]}, convert=convert)
    bits, group = spec["bits"], spec.get("group_size", 64)
    if bits not in (4, 8):
        raise ValueError(f"bits={bits} must be 8 (int8) or 4 (int4)")
    for name in spec["modules"]:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, leaf, None)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"quantization module {name!r} is not a linear layer of this model")
        if bits == 4 and lin.in_features % group:
            raise ValueError(f"{name}: group_size={group} does not divide its input width {lin.in_features}; "
                             f"pick a group size dividing it ({', '.join(map(str, GROUP_SIZES))})")
        if convert:
            new = Int8Linear.from_linear(lin) if bits == 8 else Int4Linear.from_linear(lin, group)
        elif bits == 8:
            new = Int8Linear(lin.in_features, lin.out_features, lin.bias is not None, device=lin.weight.device)
        else:
            new = Int4Linear(lin.in_features, lin.out_features, lin.bias is not None, group_size=group,
                             device=lin.weight.device)
        setattr(parent, leaf, new)
    model.quantization = {"bits": bits, "group_size": group if bits == 4 else None, "modules": list(spec["modules"]),
                          **({"int8_modules": list(spec["int8_modules"])} if spec.get("int8_modules") else {})}
    return model
