"""Fused lm_head + cross-entropy: the loss of next-token prediction without the [N, V] logits in memory.

The last projection of a language model produces N x V logits (4,096 tokens x a 50k vocabulary = 800 MB
in fp32), and the usual loss then reads and writes that matrix several times: the fp32 copy, log-softmax,
its backward, the gradient cast. Here the tokens are taken a chunk at a time; for each chunk the logits
are formed, reduced to the loss, and turned at once into the gradient of the loss with respect to them
(softmax - one-hot), which is multiplied back into the gradients of the hidden states and of the
weight while the chunk is still in cache. The backward pass then only scales the stored gradients. The
idea is that of Liger Kernel's fused linear cross-entropy (Hsu et al., 2024) and of Cut Cross-Entropy
(Wijmans et al., 2024), written here for plain PyTorch ops.

Numerics follow the unfused path under autocast: the matmuls run in the autocast dtype (bf16 products,
as F.linear would), the softmax and the loss in fp32, the gradient of the logits is cast back to the
matmul dtype, and weight-gradient partial sums are accumulated in fp32.

Final-logit soft-capping (Gemma 2: logits = cap * tanh(z / cap)) is applied to each chunk in fp32 and its
derivative, 1 - tanh^2, folded into the chunk's gradient, so a capped model trains on the same fused path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Token cross-entropy in fp32 of logits [.., V] against targets [..].

    groundup's CPU lm_head returns logits as a transposed view of a contiguous [V, N] matrix (see
    nn/linear.py); flattening that to [N, V] would copy the largest tensor of the step, cache-unfriendly.
    Cross-entropy takes the class dimension second, so [1, V, N] is used as it lies.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V], a view whenever possible
    if flat.t().is_contiguous() and not flat.is_contiguous():
        return F.cross_entropy(flat.t().float().unsqueeze(0), targets.reshape(1, -1), reduction=reduction)
    return F.cross_entropy(flat.float(), targets.reshape(-1), reduction=reduction)


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _loss_and_grad(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, targets: torch.Tensor,
                   ignore_index: int, scale: float | torch.Tensor, chunk: int, need_grad: bool,
                   cap: float | None = None):
    """Sum of token losses, and (when need_grad) the gradients of `scale` x that sum w.r.t. x, w, b.

    x [N, D] and w [V, D] (b [V]) are in the matmul dtype. The chunk buffers are allocated once: on CPU a
    fresh tens-of-megabytes tensor per chunk costs more in page faults than the arithmetic on it.
    """
    n, v = x.shape[0], w.shape[0]
    low = w.dtype != torch.float32
    c_max = min(chunk, n)
    buf32 = torch.empty(c_max, v, dtype=torch.float32, device=x.device)
    buf_low = torch.empty(c_max, v, dtype=w.dtype, device=x.device) if low else None
    buf_tanh = torch.empty(c_max, v, dtype=torch.float32, device=x.device) if cap is not None and need_grad else None
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    gx = torch.empty_like(x) if need_grad else None
    gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_grad else None
    gw_part = torch.empty_like(w) if need_grad and low else None
    gb = torch.zeros(v, dtype=torch.float32, device=w.device) if need_grad and b is not None else None
    for s in range(0, n, chunk):
        xc, tc = x[s : s + chunk], targets[s : s + chunk]
        c = xc.shape[0]
        logits = buf32[:c]  # [c, V] fp32
        prod = buf_low[:c] if low else logits  # the product in the operands' dtype, as F.linear
        if b is None:
            torch.mm(xc, w.t(), out=prod)
        else:
            torch.addmm(b, xc, w.t(), out=prod)
        if low:
            logits.copy_(prod)
        if cap is not None:  # logits = cap * tanh(z / cap), keeping tanh for the derivative
            logits.div_(cap).tanh_()
            tanh = buf_tanh[:c].copy_(logits) if buf_tanh is not None else None
            logits.mul_(cap)
        valid = tc != ignore_index
        safe = torch.where(valid, tc, 0).unsqueeze(1)  # [c, 1]
        picked = logits.gather(1, safe)  # [c, 1]
        # log-sum-exp with the max subtracted, in place: logits becomes exp(logits - max).
        top = logits.amax(dim=1, keepdim=True)  # [c, 1]
        denom = logits.sub_(top).exp_().sum(dim=1, keepdim=True)  # [c, 1]
        total += ((top + denom.log() - picked).squeeze(1) * valid).sum()
        if not need_grad:
            continue
        # d(scale x sum of losses)/d logits = scale x (softmax - one_hot), zero on ignored rows; in place.
        row_scale = (valid.to(torch.float32) * scale).unsqueeze(1)  # [c, 1]
        probs = logits.mul_(row_scale / denom)
        probs.scatter_add_(1, safe, -row_scale)
        if cap is not None:  # chain rule through the cap: d(cap tanh(z / cap))/dz = 1 - tanh^2
            probs.mul_(tanh.square_().neg_().add_(1))
        g = buf_low[:c].copy_(probs) if low else probs  # the matmul dtype, as the cast's backward gives
        torch.mm(g, w, out=gx[s : s + chunk])  # [c, D]
        if low:
            gw.add_(torch.mm(g.t(), xc, out=gw_part))  # [V, D] partial sums accumulated in fp32
        else:
            gw.addmm_(g.t(), xc)
        if gb is not None:
            gb.add_(probs.sum(0))
    return total, gx, gw, gb


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, targets, ignore_index, scale, chunk, dtype, cap):
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            total, gx, gw, gb = _loss_and_grad(x.to(dtype), w, b, targets, ignore_index, scale, chunk, True, cap)
        ctx.save_for_backward(gx, gw, gb if gb is not None else torch.empty(0))
        ctx.meta = (x.dtype, weight.dtype, bias is not None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        gx, gw, gb = ctx.saved_tensors
        x_dtype, w_dtype, has_bias = ctx.meta
        return ((gx * grad_out).to(x_dtype), (gw * grad_out).to(w_dtype),
                (gb * grad_out).to(w_dtype) if has_bias else None, None, None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = -100, reduction: str = "mean",
                         chunk_size: int = 512, softcap: float | None = None) -> torch.Tensor:
    """Cross-entropy of logits = hidden @ weight.T + bias against targets, never forming all the logits.
    ``softcap`` caps the logits first, as softcap * tanh(logits / softcap) (Gemma 2's final logits).

    hidden [..., D], weight [V, D], targets [...] (ignore_index marks positions without a target).
    reduction "mean" (over counted targets; 0 when there are none) or "sum". Equal to
    ``F.cross_entropy(F.linear(hidden, weight, bias).float().flatten(0, -2), targets.flatten())`` in value
    and gradients, under autocast as well, with memory O(chunk_size x V) instead of O(N x V).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} must be 'mean' or 'sum'")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree: hidden must "
                         "be targets' shape plus the model dimension")
    x = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
    t = targets.reshape(-1)  # [N]
    dtype = _matmul_dtype(x)
    scale: float | torch.Tensor = 1.0
    if reduction == "mean":  # a tensor, not int(count): no host sync per training step
        scale = 1.0 / (t != ignore_index).sum().clamp(min=1).to(torch.float32)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _LinearCrossEntropy.apply(x, weight, bias, t, ignore_index, scale, chunk_size, dtype, softcap)
    with torch.autocast(x.device.type, enabled=False):
        b = bias.to(dtype) if bias is not None else None
        total = _loss_and_grad(x.to(dtype), weight.to(dtype), b, t, ignore_index, scale, chunk_size, False,
                               softcap)[0]
    return total * scale
