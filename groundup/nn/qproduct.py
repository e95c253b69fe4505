"""The products of weight-only quantized layers (nn/qlinear.py, nn/gptq_linear.py): the weight dequantized a block
of output rows at a time, a backward that dequantizes again instead of keeping a float weight, and the dispatch
that times a layer's ways to pose its product once per shape (nn/autotune.py) and keeps the fastest.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import autotune

CHUNK_BYTES = 8 * 2**20  # float weight rows dequantized at a time: the copy stays small beside the codes


def _row_step(in_features: int) -> int:
    return max(1, CHUNK_BYTES // (4 * in_features))


def chunked_linear(x: torch.Tensor, dequantize, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x [.., in] times the weight dequantized to x's dtype a block of output rows at a time, so no float copy of
    a whole matrix (a 32k x 768 lm_head: 98 MB in fp32) is ever held; bias added inside each product."""
    step = _row_step(x.shape[-1])
    parts = [F.linear(x, dequantize(x.dtype, slice(r, r + step)), None if bias is None else bias[r:r + step])
             for r in range(0, out_features, step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # [.., out]


class _FrozenLinear(torch.autograd.Function):
    """y = x W^T + b for a frozen quantized W. The backward dequantizes W again (by blocks of rows) for
    grad_x = grad_y W instead of autograd keeping the float copies of the forward: training adapters over a
    quantized base then holds only the codes, QLoRA's memory saving (Dettmers et al. 2023)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, layer: nn.Module) -> torch.Tensor:
        ctx.layer = layer
        return chunked_linear(x, layer.dequantize, layer.out_features, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer, grad_x, grad_b = ctx.layer, None, None
        if ctx.needs_input_grad[0]:
            step = _row_step(layer.in_features)
            for r in range(0, layer.out_features, step):
                part = grad[..., r:r + step] @ layer.dequantize(grad.dtype, slice(r, r + step))  # [.., in]
                grad_x = part if grad_x is None else grad_x + part
        if ctx.needs_input_grad[1]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_b, None


def frozen_linear(x: torch.Tensor, layer: nn.Module, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [.., in] times a quantized layer's dequantized weight (in x's dtype), plus bias; differentiable in x
    (and bias) without keeping the float weight for the backward. ``layer`` has ``dequantize(dtype, rows)``,
    ``in_features`` and ``out_features``."""
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _FrozenLinear.apply(x, bias, layer)
    return chunked_linear(x, layer.dequantize, layer.out_features, bias)


def dequant_product(name: str, x: torch.Tensor, dequantize, out_features: int) -> torch.Tensor:
    """x [M, in] bf16 times the dequantized weight: in bf16 ("dequant"), or in fp32 ("dequant32"), which wins on
    CPUs without native bf16 arithmetic (AVX2 only: there bf16 GEMMs run several times slower than fp32)."""
    dtype = torch.float32 if name == "dequant32" else torch.bfloat16
    return chunked_linear(x.to(dtype), dequantize, out_features, None).to(torch.bfloat16)  # [M, out]


def dispatch(layer: nn.Module, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Run the fastest measured product of ``layer`` (its ``_product(name, x)`` for each of ``names``) on
    x [.., in] in bf16; the result in x's dtype, bias added."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layer.in_features).to(torch.bfloat16).contiguous()  # [M, in]: the kernels want rows
    if torch.is_grad_enabled() and x.requires_grad:  # adapters train over the frozen layer: the kernels have no
        y = frozen_linear(x2, layer)  # backward, and this one keeps no float weight for it
    elif torch.compiler.is_compiling():  # a traced (decode) step times nothing: the kernel, the one-row choice
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


class DispatchedLinear(nn.Module):
    """A weight-only quantized linear layer whose product is measured among its kernel (``KERNEL``, where
    ``has_kernel``) and the weight dequantized to bf16 or fp32 (``dispatch``). A subclass gives ``dequantize``,
    ``_kernel_product(x)`` for x [M, in] bf16, and ``has_kernel`` when the kernel does not serve every shape."""

    KERNEL = ""
    has_kernel = True

    def _kernel_product(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _product(self, name: str, x: torch.Tensor) -> torch.Tensor:  # x [M, in] bf16
        if name == self.KERNEL:
            return self._kernel_product(x)
        return dequant_product(name, x, self.dequantize, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = (self.KERNEL,) if self.has_kernel else ()
        return dispatch(self, x, (*kernel, "dequant", "dequant32") if x.device.type == "cpu" else ("dequant",))
