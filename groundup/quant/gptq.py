"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"): quantize a linear layer's weight one input column at a time and push each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's squared output error.

For inputs X (the calibration activations of this layer), the output error of a weight change dW is
|dW X|^2 = tr(dW H dW^T) with H = 2/n sum x x^T. Quantizing column j to q_j leaves the error
e_j = (w_j - q_j) / [H^-1]_jj, which the remaining columns absorb: w_k -= e_j [H^-1]_jk (the optimal brain
surgeon update, Hassibi & Stork 1993). GPTQ takes the columns in a fixed order (or by descending diag(H),
"act-order"), uses the upper Cholesky factor of H^-1 for the row H^-1[j, j:] of each step (numerically stable),
and applies the updates lazily in blocks of 128 columns: within a block column by column, to the rest of the
matrix once per block (a matrix product).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn.gptq_linear import BITS, GPTQLinear, run_length
from ..nn.qlinear import quantizable, replace_module
from ..nn.qspec import GPTQSpec
from .calibrate import Calibration, block_linears


def group_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (fp16-representable, fp32 [out]) and integer zero point (int64 [out]) per row of w [out, g]: the
    min-max grid over [min(w, 0), max(w, 0)] (zero is always a level), as GPTQ's quantizer; ``sym`` centres it
    (zero point 2^(bits-1))."""
    maxq = 2**bits - 1
    lo, hi = w.min(dim=1).values.clamp(max=0), w.max(dim=1).values.clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = torch.where(lo < 0, -hi, lo)
    flat = (lo == 0) & (hi == 0)
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    # the checkpoint stores fp16 scales: the codes are computed against the stored value
    scale = ((hi - lo) / maxq).to(torch.float16).float().clamp(min=torch.finfo(torch.float16).tiny)
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero.long()


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, dequantized values) of one column w [out]."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return q.long(), scale * (q - zero)


def gptq(w: torch.Tensor, hessian: torch.Tensor, *, bits: int = 4, group_size: int = 128, damp: float = 0.01,
         act_order: bool = False, sym: bool = False, block: int = 128, name: str = "layer"
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize w [out, in] against the Hessian H [in, in] of its inputs.

    Returns codes int64 [out, in], scales fp32 [out, groups], zeros int64 [out, groups] and g_idx int64 [in]
    (the group of each input column; with ``act_order`` the groups follow the quantization order). ``damp`` x
    mean(diag H) is added to the diagonal; columns no input ever reached (H_jj = 0) are zeroed."""
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    out_f, in_f = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    chol, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        chol, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
    if int(info) != 0:
        raise ValueError(f"{name}: its Hessian is not positive definite even with {damp:g} x its mean diagonal "
                         "added (inputs that are linearly dependent, or too few calibration tokens); raise the "
                         "dampening (damp=0.1) or give more calibration samples")
    U = chol  # upper Cholesky factor of H^-1
    groups = -(in_f // -group_size)  # the last one partial when group_size does not divide in_f
    Q = torch.zeros(out_f, in_f, dtype=torch.int64)
    scales, zeros = torch.zeros(out_f, groups), torch.zeros(out_f, groups, dtype=torch.int64)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:  # the group's grid from its columns as they are now (earlier errors in)
                g = col // group_size
                region = W1[:, i:i + group_size]  # a group longer than the block reaches past it into W
                if region.shape[1] < group_size:
                    region = torch.cat([region, W[:, i2:i2 + group_size - region.shape[1]]], dim=1)
                scales[:, g], zeros[:, g] = group_params(region, bits, sym)
            g = col // group_size
            q, dq = quantize_column(W1[:, i], scales[:, g], zeros[:, g], bits)
            Q[:, col] = q
            err = (W1[:, i] - dq) / U[col, col]
            W1[:, i:] -= err[:, None] * U[col, col:i2][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    inverse = torch.argsort(perm)
    g_idx = (torch.arange(in_f) // group_size)[inverse]  # input j was quantized at position inverse[j]
    return Q[:, inverse], scales, zeros, g_idx


def quantize_gptq(model: nn.Module, ids: torch.Tensor, *, bits: int = 4, group_size: int = 128, damp: float = 0.01,
                  act_order: bool = False, sym: bool = False, micro_batch: int = 8, progress: bool = True
                  ) -> nn.Module:
    """GPTQ over every linear layer of a CausalLM's blocks, in place, from calibration ids [N, T]
    (calibrate.calibration_ids): block by block, each block's Hessians from the outputs of the blocks already
    quantized; the layers become nn/gptq_linear.GPTQLinear. Everything is checked before the first layer changes;
    a layer whose Hessian stays singular is named (the model is then left partly quantized: reload it)."""

    def codes(name: str, lin: nn.Linear, hessians: dict[str, torch.Tensor]):
        if name not in hessians:
            raise ValueError(f"{name}: no calibration input reached it")
        return gptq(lin.weight, hessians[name], bits=bits, group_size=group_size, damp=damp, act_order=act_order,
                    sym=sym, name=name)

    return quantize_blocks(model, ids, lambda cal, i, layers: cal.hessians(i, list(layers)), codes, bits=bits,
                           group_size=group_size, micro_batch=micro_batch, progress=progress, desc="gptq",
                           settings={"desc_act": act_order, "sym": sym, "damp_percent": damp})


def quantize_blocks(model: nn.Module, ids: torch.Tensor, prepare: Callable, codes: Callable, *, bits: int,
                    group_size: int, micro_batch: int, progress: bool, desc: str, settings: dict) -> nn.Module:
    """The loop GPTQ and AWQ share: check, then for each block ``prepare(cal, i, layers)`` (Hessians, or AWQ's
    folded scales and inputs), each of its linear layers replaced by the GPTQLinear of ``codes(name, layer,
    prepared)`` (codes, scales, zeros, g_idx), a progress bar a layer, and the next block fed this block's
    quantized outputs."""
    check(model, bits, group_size)
    cal = Calibration(model, ids, micro_batch)
    names = [n for i in range(len(model.blocks)) for n in block_linears(model, i)]
    bar = tqdm(total=len(names), desc=desc, unit="layer", disable=not progress)
    for i in range(len(model.blocks)):
        layers = block_linears(model, i)
        prepared = prepare(cal, i, layers)
        for name, lin in layers.items():
            bar.set_postfix_str(name)
            q, scales, zeros, g_idx = codes(name, lin, prepared)
            replace_module(model, name, GPTQLinear.from_codes(q, scales, zeros, g_idx, bits=bits,
                                                              group_size=group_size, bias=lin.bias))
            bar.update()
        cal.advance(i)
    bar.close()
    return finish(model, names, {"bits": bits, "group_size": group_size, **settings})


def check(model: nn.Module, bits: int, group_size: int) -> None:
    """Refuse what GPTQ/AWQ cannot do to this model, before any work: a quantized or adapted model, an unknown
    bit width, a group size or width the GPTQ layout cannot hold (naming the layer)."""
    if getattr(model, "quantization", None):
        raise ValueError("the model is already quantized; load the float checkpoint")
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("the model has LoRA adapters: merge them (merge_and_unload) before quantizing")
    if not hasattr(model, "block_runner"):
        raise ValueError(f"{type(model).__name__}: calibrated quantization runs decoder-only models (CausalLM)")
    if bits not in BITS:
        raise ValueError(f"bits={bits} must be one of {BITS}")
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    per = run_length(bits)[0]
    for name in quantizable(model):
        lin = model.get_submodule(name)
        if lin.in_features % per or lin.out_features % per:
            raise ValueError(f"{name} ({lin.out_features} x {lin.in_features}): the GPTQ layout at {bits} bits packs "
                             f"{per} codes together, so both widths must be multiples of {per}")


def finish(model: nn.Module, names: list[str], settings: dict) -> nn.Module:
    """Record the model's quantization spec; every layer stores its zero points one way (minus one, "gptq",
    unless some layer has a zero point of 0, then as they are, "gptq_v2")."""
    layers = [model.get_submodule(n) for n in names]
    fmt = "gptq_v2" if any(layer.checkpoint_format == "gptq_v2" for layer in layers) else "gptq"
    for layer in layers:
        if layer.checkpoint_format != fmt:
            layer.set_format(fmt)
    model.quantization = GPTQSpec(names, **settings, checkpoint_format=fmt)
    return model
