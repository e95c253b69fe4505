"""Layers whose weights stay in a GGUF file's block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
F16, BF16, F32): the bytes as the file stores them, a row of blocks per output feature, so a model loaded from
a GGUF file holds no float copy of its matrices and writes them back unchanged.

The product runs groundup's native kernels (groundup.kernels): the activations rounded once per product to
the 8-bit blocks each format pairs with in llama.cpp, then integer dot products, as llama.cpp computes. Without
the kernels (GROUNDUP_KERNELS=off, no compiler) the weight is dequantized a block of rows at a time and
multiplied in float32 by torch: results then differ from llama.cpp's by the activations' rounding. The layer's
repr says which path it takes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module  # the hooks registered for every module

from .. import kernels
from ..kernels.ggml_quants import FORMATS, TYPE_IDS, dequantize
from .qproduct import chunked_linear, frozen_linear

FLOAT_TYPES = ("F32", "F16", "BF16")


def row_bytes(type_name: str, in_features: int) -> int:
    """Bytes of one row of ``in_features`` values in ggml type ``type_name``; ValueError when the row does not
    divide into whole blocks."""
    if type_name not in TYPE_IDS:
        raise ValueError(f"ggml type {type_name!r} is not supported: {', '.join(TYPE_IDS)}")
    _, per, size = FORMATS[TYPE_IDS[type_name]]
    if in_features % per:
        raise ValueError(f"{type_name} rows hold multiples of {per} values, not {in_features}")
    return in_features // per * size


class _Blocks(nn.Module):
    """A matrix [rows, cols] kept as ggml blocks in the buffer ``blocks`` (uint8 [rows, row bytes])."""

    def __init__(self, rows: int, cols: int, ggml_type: str, device=None) -> None:
        super().__init__()
        self.ggml_type = ggml_type
        self.type_id = TYPE_IDS[ggml_type]
        self.register_buffer("blocks", torch.zeros(rows, row_bytes(ggml_type, cols), dtype=torch.uint8,
                                                   device=device))

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """The float weight of ``rows`` (a slice or index tensor), [r, cols] in ``dtype``."""
        raw = self.blocks[rows]
        cols = self._cols()
        return dequantize(raw.reshape(-1), self.type_id, raw.shape[0] * cols).view(raw.shape[0], cols).to(dtype)

    def _cols(self) -> int:
        raise NotImplementedError


class GGUFLinear(_Blocks):
    """y = x W^T (+ b) with W [out, in] kept as ggml blocks. Frozen: gradients reach x (and the bias), so
    adapters train over it (the weight dequantized again for the backward, as the other quantized layers do)."""

    def __init__(self, in_features: int, out_features: int, ggml_type: str, bias: bool = False, *,
                 device=None) -> None:
        super().__init__(out_features, in_features, ggml_type, device)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    def _cols(self) -> int:
        return self.in_features

    @property
    def native(self) -> bool:
        """Whether the product runs the native kernel (else torch's float path)."""
        return self.blocks.is_cpu and kernels.available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        blocks = self.blocks
        if x.requires_grad and torch.is_grad_enabled():
            y = frozen_linear(x2.float(), self)
        elif blocks.is_cpu and kernels.available():  # self.native, inline: this is the decode loop's hot path
            y = kernels.ggml_mm(_rows(x2), blocks, self.type_id)  # [M, out] float32
        else:
            y = chunked_linear(x2.float(), self.dequantize, self.out_features, None)
        return self._finish(y, x)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The product y [M, out] (float32) as the layer returns it for input x [..., in]: x's dtype and leading
        shape, the bias added."""
        if x.dtype != torch.float32:
            y = y.to(x.dtype)
        bias = self.bias
        if bias is not None:
            y = y + bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        if not self.native:
            path = "torch float32 (dequantized by row blocks)"
        elif self.ggml_type in FLOAT_TYPES:
            path = f"native {kernels.variant()}, float32 activations"
        else:
            path = f"native {kernels.variant()}, activations rounded to 8-bit blocks"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"ggml_type={self.ggml_type}, product={path}")


class GGUFEmbedding(_Blocks):
    """Token embeddings kept as ggml blocks: a lookup decodes only the rows it reads. A tied head is a
    GGUFLinear over the same buffer."""

    def __init__(self, num_embeddings: int, embedding_dim: int, ggml_type: str, *, dtype: torch.dtype = torch.float32,
                 device=None) -> None:
        super().__init__(num_embeddings, embedding_dim, ggml_type, device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype = dtype

    def _cols(self) -> int:
        return self.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return self.dequantize(self.dtype, flat).view(*ids.shape, self.embedding_dim)  # [.., C]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ggml_type={self.ggml_type}"


def project(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """``[layer(x) for layer in layers]`` (q, k and v; gate and up). When every layer is a plain GGUFLinear on the
    native kernels (no adapter wrapped round it, no hooks on it, no gradient asked for), one call computes them
    all: x rounded to 8-bit blocks once, as llama.cpp reuses it, and one pass of the threads over all the rows.
    The results are the ones the layers give one by one."""
    fused = all(type(m) is GGUFLinear and not m._forward_hooks and not m._forward_pre_hooks for m in layers) \
        and not _module._global_forward_hooks and not _module._global_forward_pre_hooks
    if not fused or (x.requires_grad and torch.is_grad_enabled()) or not all(m.native for m in layers):
        return [m(x) for m in layers]
    ys = kernels.ggml_mm_many(_rows(x.reshape(-1, x.shape[-1])), [m.blocks for m in layers],
                              [m.type_id for m in layers])  # [M, out_i] each
    return [m._finish(y, x) for m, y in zip(layers, ys, strict=True)]


def _rows(x2: torch.Tensor) -> torch.Tensor:
    """x [M, in] as the kernels take it: contiguous float32 (no copy when it already is)."""
    return x2 if x2.dtype == torch.float32 and x2.is_contiguous() else x2.float().contiguous()
