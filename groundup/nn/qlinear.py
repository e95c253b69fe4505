"""Weight-only quantized linear layers: int8 per output channel, int4 in groups (groundup.quant makes them).

Int8Linear (absmax per output row): w ~ q * s, q in [-127, 127], s = max|w_row| / 127.
Int4Linear (asymmetric per group of `group_size` inputs, the round-to-nearest scheme of GPTQ's baseline and
of llama.cpp's Q4_1): w ~ q * s + m, q in [0, 15], s = (max - min) / 15, m = min.

Both keep nn.Linear's interface and module names, so a quantized model is the same model with some layers
swapped. State-dict tensors: ``weight`` (int8 [out, in]; for int4 uint8 [out, in / 2], two
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

import torch
from torch import nn

from . import nf4, qproduct
from .gptq_linear import GPTQLinear
from .qproduct import DispatchedLinear, frozen_linear

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


class Int8Linear(DispatchedLinear):
    """y = x (q s)^T + b with int8 codes q [out, in] and per-row scales s."""

    bits, KERNEL = 8, "int8mm"

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

    def _kernel_product(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.data_ptr() % 64 or self.weight_scale.data_ptr() % 64:
            # Codes read from a file are views into its memory map, at any byte offset; the AVX-512 build of this
            # kernel loads 64-byte-aligned vectors and crashes on them (an AVX2 one does not). Own aligned copies.
            self.weight, self.weight_scale = self.weight.clone(), self.weight_scale.clone()
        return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.weight_scale.to(torch.bfloat16))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class Int4Linear(DispatchedLinear):
    """y = x (q s + m)^T + b with 4-bit codes q and a scale s and minimum m per group of inputs."""

    bits, KERNEL = 4, "int4mm"

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
            step = max(64, qproduct.CHUNK_BYTES // (4 * self.in_features) // 64 * 64)
            if self.out_features % 64:
                step = self.out_features
            packed = torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                unpack_int4(self.weight[r:r + step]).to(torch.int32), 8) for r in range(0, self.out_features, step)])
            # the kernel computes (q - 8) s + z: z is the value of the middle code
            zeros = self.weight_min.float() + 8 * self.weight_scale.float()
            sz = torch.stack((self.weight_scale.float(), zeros), dim=-1).transpose(0, 1)  # [groups, out, 2]
            self._kernel = (self.weight, packed, sz.contiguous().to(torch.bfloat16))
        return self._kernel[1], self._kernel[2]

    def _kernel_product(self, x: torch.Tensor) -> torch.Tensor:
        packed, sz = self._kernel_weights()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, self.group_size, sz)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
                f"group_size={self.group_size}")


class NF4Linear(nn.Module):
    """y = x W^T + b with W in 4-bit NormalFloat (or FP4) blocks, optionally double-quantized (nn/nf4.py):
    the layer QLoRA trains adapters over, in the layout of bitsandbytes' Linear4bit.

    Buffers: ``weight`` (codes uint8 [(out x in + 1) / 2, 1] over the flattened matrix), ``absmax`` (fp32 per
    block, or uint8 codes when double-quantized, with ``nested_absmax``, ``nested_offset`` and
    ``nested_quant_map``), ``quant_map`` (the 16 levels). The product dequantizes blocks of rows to the
    original weight dtype, then computes in ``compute_dtype`` (bf16 by default), as bitsandbytes does, so the
    same folder gives the same outputs in both; the backward dequantizes again rather than keeping a float copy.
    """

    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, quant_type: str = "nf4",
                 blocksize: int = 64, double_quant: bool = True, compute_dtype: torch.dtype = torch.bfloat16,
                 weight_dtype: torch.dtype = torch.bfloat16, device=None) -> None:
        super().__init__()
        if blocksize not in nf4.BLOCKSIZES:
            raise ValueError(f"blocksize={blocksize} must be one of {nf4.BLOCKSIZES}")
        self.in_features, self.out_features = in_features, out_features
        self.quant_type, self.blocksize, self.double_quant = quant_type, blocksize, double_quant
        self.compute_dtype, self.weight_dtype = compute_dtype, weight_dtype
        n = in_features * out_features
        blocks = -(n // -blocksize)
        self.register_buffer("weight", torch.zeros((n + 1) // 2, 1, dtype=torch.uint8, device=device))
        self.register_buffer("quant_map", nf4.levels(quant_type).to(device))
        if double_quant:
            self.register_buffer("absmax", torch.zeros(blocks, dtype=torch.uint8, device=device))
            self.register_buffer("nested_absmax", torch.ones(-(blocks // -nf4.NESTED_BLOCKSIZE), device=device))
            self.register_buffer("nested_offset", torch.zeros((), device=device))
            self.register_buffer("nested_quant_map", nf4.dynamic_map().to(device))
        else:
            self.register_buffer("absmax", torch.ones(blocks, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, lin: nn.Module, *, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: torch.dtype = torch.bfloat16) -> NF4Linear:
        w = lin.weight.detach()
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, quant_type=quant_type, blocksize=blocksize,
                double_quant=double_quant, compute_dtype=compute_dtype, weight_dtype=w.dtype, device=w.device)
        q.weight, absmax = nf4.quantize_4bit(w, blocksize, quant_type)
        if double_quant:
            q.absmax, q.nested_absmax, q.nested_offset = nf4.compress_absmax(absmax)
        else:
            q.absmax = absmax
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        return q

    def block_absmax(self, blocks: slice = slice(None)) -> torch.Tensor:
        """The fp32 absmax of the blocks ``blocks`` (all by default), undoing the double quantization."""
        if not self.double_quant:
            return self.absmax[blocks]
        return nf4.absmax_of(self.absmax, self.nested_absmax, self.nested_offset, self.nested_quant_map,
                             blocks=blocks)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, rows: slice = slice(None)) -> torch.Tensor:
        """The weight [out, in] (or its output rows ``rows``): fp32 levels x absmax, rounded to the original
        weight dtype first (as bitsandbytes' dequantize_4bit returns it), then to ``dtype``. Only the blocks of
        those rows have their absmax decoded (the products dequantize a block of rows at a time)."""
        shape = (self.out_features, self.in_features)
        _, _, first, end = nf4.block_span(shape, self.blocksize, rows)
        w = nf4.dequantize_4bit(self.weight, self.block_absmax(slice(first, end)), shape, self.quant_map,
                                self.blocksize, self.weight_dtype, rows=rows, first_block=first)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype
        bias = None if self.bias is None else self.bias.to(dt)
        return frozen_linear(x.to(dt), self, bias).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.quant_type}, "
                f"blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")


QUANTIZED = (Int8Linear, Int4Linear, NF4Linear, GPTQLinear)


def is_linear(m: nn.Module) -> bool:
    """A float or weight-only quantized linear layer (what adapters may wrap)."""
    return isinstance(m, (nn.Linear, *QUANTIZED))


def io_shape(m: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a linear layer, float or quantized (whose ``weight`` holds codes), or of
    an adapter around one."""
    if hasattr(m, "out_features") and hasattr(m, "in_features"):
        return m.out_features, m.in_features
    return tuple(m.weight.shape)


def quantizable(model: nn.Module, *, include_head: bool = False) -> list[str]:
    """Names of the linear layers weight-only quantization replaces: every nn.Linear in the blocks (attention,
    MLP, experts), and the lm_head when asked (tied or not: quant.quantize unties a tied one first)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    if include_head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        names.append("lm_head")
    return names


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` of ``model``."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
