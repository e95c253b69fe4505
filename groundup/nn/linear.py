"""Linear: nn.Linear (same parameters, same state-dict names) whose CPU product is posed the way that is
fastest on the running machine, chosen by measurement (nn/autotune.py).

A projection of M tokens is y = x W^T + b. Some CPU BLAS builds run the same product faster posed as
y^T = W x^T + b (the weight, with its long output dimension, as the left operand), and for a few rows
(decoding) split_linear hands each thread its own block of weight rows. Other CPUs run F.linear fastest,
so none of these is a constant: each shape's path is measured once on the running machine
(docs/core.md has the figures). Other devices use the ordinary kernel.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import autotune

GEMV_TOKENS = 16  # up to this many tokens (decoding) the fp32 product goes through split_linear


def split_linear(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ b) for few tokens x [M, in] -> [M, out], with W's rows split into one block per thread.

    Decoding multiplies every weight by a handful of token vectors: a product bound by reading W from
    memory. MKL runs fp32 products of these shapes on about one core, at a third to a half of the
    machine's read bandwidth; posed as a batched product over P row blocks [P, out / P, in], each thread
    streams its own block. Up to 4 tokens the block is the left operand (W_p x^T), beyond that the right
    one (x W_p^T). Rows that do not divide evenly go through one small product. Whether this beats F.linear
    is measured per shape (autotune).
    """
    P = torch.get_num_threads()
    out_f, in_f = weight.shape
    m = x.shape[0]
    main = out_f - out_f % P
    blocks = weight[:main].view(P, main // P, in_f)  # [P, out / P, in], no copy
    if m <= 4:
        y = torch.bmm(blocks, x.t().unsqueeze(0).expand(P, in_f, m)).view(main, m).t()  # [M, main] view
    else:
        y = torch.bmm(x.unsqueeze(0).expand(P, m, in_f), blocks.transpose(1, 2))  # [P, M, out / P]
        y = y.permute(1, 0, 2).reshape(m, main)  # [M, main]
    if main < out_f:
        y = torch.cat([y, x @ weight[main:].t()], dim=1)  # [M, out]
    return y if bias is None else y + bias


class Linear(nn.Linear):
    """nn.Linear with the CPU product posed the fastest way for this machine; identical math, parameters and
    state-dict names.

    Candidates (all equal to F.linear within the dtype's rounding): ``plain`` F.linear; ``weight_major``
    (W x^T + b)^T, copied back to row-major; ``split`` (split_linear, for a few rows). Which one runs is
    measured per (rows bucket, in, out, dtype, threads, bias, grad) by nn/autotune.py the first time the
    shape is seen; with gradients the forward and backward are timed together.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)
        m = x.numel() // self.in_features
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        names = ["plain"]
        if m > 1 and x.dim() >= 2:
            names.append("weight_major")
        if (not grad and m <= GEMV_TOKENS and torch.get_num_threads() >= 2 and self.weight.is_contiguous()
                and self.out_features >= torch.get_num_threads()):
            names.append("split")
        if len(names) == 1:
            return F.linear(x, self.weight, self.bias)
        key = ("linear", autotune.bucket(m), self.in_features, self.out_features, dtype, torch.get_num_threads(),
               self.bias is not None, grad)
        if grad:
            name, _ = autotune.choose(key, lambda: [(n, partial(self._train_step, n, x)) for n in names])
            return self._run(name, x)
        name, out = autotune.choose(key, lambda: [(n, partial(self._run, n, x)) for n in names])
        return out if out is not None else self._run(name, x)

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "plain":
            return F.linear(x, self.weight, self.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # [M, in]
        if name == "split":
            return split_linear(self.weight, x2, self.bias).reshape(*lead, self.out_features)
        if self.bias is None:
            out = torch.mm(self.weight, x2.t())  # [out, M]
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, x2.t())  # [out, M]
        # Made contiguous: a transposed view is free here but slows every elementwise op after it (in bf16 by
        # several times), a cost the tuner, timing this product alone, would not see.
        return out.t().contiguous().reshape(*lead, self.out_features)  # [.., out]

    def _train_step(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One forward and backward of path ``name`` on detached copies (no gradient reaches the model)."""
        with torch.enable_grad():
            xd = x.detach().requires_grad_()
            w = self.weight.detach().requires_grad_()
            b = self.bias.detach().requires_grad_() if self.bias is not None else None
            if name == "plain":
                y = F.linear(xd, w, b)
            else:
                x2 = xd.reshape(-1, xd.shape[-1])
                y = (torch.mm(w, x2.t()) if b is None else torch.addmm(b.unsqueeze(1), w, x2.t())).t()
                y = y.reshape(*x.shape[:-1], self.out_features)
            grads = torch.autograd.grad(y, [xd, w], torch.ones_like(y))
        return grads[1]  # the weight gradient: equal for both paths, compared by the tuner
