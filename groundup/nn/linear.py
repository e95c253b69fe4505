"""Linear: nn.Linear (same parameters, same state-dict names) with a faster CPU matmul orientation.

A projection of M tokens is y = x W^T + b. On CPU, BLAS runs the same product noticeably faster when it
is posed as y^T = W x^T + b (the weight, with its long output dimension, as the left operand): measured
on this machine's 2-core MKL, fp32 GPT-2 MLP 15.6 ms -> 7.7 ms and the 50k-vocabulary lm_head
~98 -> ~145 GFLOP/s at 128 tokens. The result is returned as a transposed view, which reshapes, views
and elementwise ops keep without copying, and which the next Linear consumes directly (its x^T is then
contiguous). In bf16/fp16 the oneDNN kernels gain only on very wide outputs (the lm_head), while the
transposed activations slow the elementwise ops that follow, so there it is used for those alone. Other
devices use the ordinary kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GEMV_TOKENS = 16  # up to this many tokens (decoding) the fp32 product goes through split_linear


def split_linear(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ b) for few tokens x [M, in] -> [M, out], with W's rows split into one block per thread.

    Decoding multiplies every weight by a handful of token vectors: a product bound by reading W from
    memory. MKL runs fp32 products of these shapes on about one core, at a third to a half of the
    machine's read bandwidth; posed as a batched product over P row blocks [P, out / P, in], each thread
    streams its own block. Measured on gpt2's 48 block matrices (2 threads, 33 GB/s sum speed): 1 token
    12 -> 26 GB/s, 2 tokens 7 -> 23, 8 tokens 8 -> 11. Up to 4 tokens the block is the left operand
    (W_p x^T), beyond that the right one (x W_p^T), whichever measured faster. Rows that do not divide
    evenly go through one small product.
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
    """nn.Linear whose CPU forward computes (W x^T + b)^T; identical math, identical parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if self._split_rows(x):
            x2 = x.reshape(-1, x.shape[-1])  # [M, in], M <= GEMV_TOKENS
            return split_linear(self.weight, x2, self.bias).reshape(*lead, self.out_features)
        if not self._weight_major(x):
            return F.linear(x, self.weight, self.bias)
        x2 = x.reshape(-1, x.shape[-1])  # [M, in]
        if self.bias is None:
            out = torch.mm(self.weight, x2.t())  # [out, M]
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, x2.t())  # [out, M]
        return out.t().reshape(*lead, self.out_features)  # [.., out] as a view of [out, M]

    def _split_rows(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.get_num_threads() < 2:
            return False
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != torch.float32:
            return False
        return (x.numel() <= GEMV_TOKENS * self.in_features and self.out_features >= torch.get_num_threads()
                and self.weight.is_contiguous())

    def _weight_major(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.dim() < 2 or x.shape[-2] == 1:
            return False
        # Under autocast the product runs in the autocast dtype, whatever x's dtype is.
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        return dtype == torch.float32 or self.out_features >= 8 * self.in_features
