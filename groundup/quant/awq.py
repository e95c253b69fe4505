"""AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration").

A few input channels carry large activations; their weights matter most. Scaling input channel j of a linear
layer by s_j > 1 (and its input by 1 / s_j, folded into whatever produces that input) leaves the float output
unchanged but shrinks channel j's relative rounding error. With s = mean|x|^alpha per input channel, alpha is
picked from a grid over [0, 1] to minimise the output error of the quantized group (q/k/v after the attention
norm, o after v when there are as many value heads as query heads, gate/up after the MLP norm measured on the
MLP's output, down after up). Optionally each weight group's range is then clipped to the fraction of its
maximum (1 down to 0.5) that minimises that group's output error. Finally every layer is rounded to nearest
on the GPTQ grid and stored in the GPTQ layout (nn/gptq_linear.py), so AWQ models load wherever GPTQ ones do.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.mlp import GatedMLP
from .calibrate import Calibration
from .gptq import group_params, quantize_blocks


def rtn(w: torch.Tensor, bits: int, group_size: int, max_abs: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round to nearest on the GPTQ grid, per group of ``group_size`` inputs (the last one partial): codes [out,
    in], scales [out, groups], zeros [out, groups]. ``max_abs`` [out, groups] clips each group to +-max_abs
    first (AWQ's clipping)."""
    out_f, in_f = w.shape
    groups = -(in_f // -group_size)
    codes = torch.empty(out_f, in_f, dtype=torch.int64)
    scales, zeros = torch.empty(out_f, groups), torch.empty(out_f, groups, dtype=torch.int64)
    for g in range(groups):
        part = w[:, g * group_size:(g + 1) * group_size].float()
        if max_abs is not None:
            part = torch.maximum(torch.minimum(part, max_abs[:, g:g + 1]), -max_abs[:, g:g + 1])
        scales[:, g], zeros[:, g] = group_params(part, bits, sym=False)
        codes[:, g * group_size:(g + 1) * group_size] = torch.clamp(
            torch.round(part / scales[:, g:g + 1]) + zeros[:, g:g + 1], 0, 2**bits - 1).long()
    return codes, scales, zeros


def fake_quant(w: torch.Tensor, bits: int, group_size: int, max_abs: torch.Tensor | None = None) -> torch.Tensor:
    """The weight that round-to-nearest on the GPTQ grid leaves, fp32 [out, in]."""
    codes, scales, zeros = rtn(w, bits, group_size, max_abs)
    g = torch.arange(w.shape[1]) // group_size
    return (codes - zeros[:, g]).float() * scales[:, g]


def groups_of(block: nn.Module, prefix: str) -> list[tuple[nn.Module, list[str], nn.Module | None]]:
    """AWQ's scale groups of one pre-norm block: (the module producing the input, the linear layers reading it,
    the module whose output measures the error, or None for the layers' own outputs)."""
    attn, mlp = block.attn, block.mlp
    groups = [(block.attn_norm, [f"{prefix}attn.{p}_proj" for p in "qkv"], None)]
    if attn.v_proj.out_features == attn.o_proj.in_features:  # one value head per query head: o follows v
        groups.append((attn.v_proj, [f"{prefix}attn.o_proj"], None))
    if isinstance(mlp, GatedMLP):
        groups.append((block.mlp_norm, [f"{prefix}mlp.gate_proj", f"{prefix}mlp.up_proj"], mlp))
        groups.append((mlp.up_proj, [f"{prefix}mlp.down_proj"], None))
    else:
        groups.append((block.mlp_norm, [f"{prefix}mlp.up_proj"], None))
    return groups


@torch.no_grad()
def fold(prev: nn.Module, s: torch.Tensor) -> None:
    """Divide the output channels of ``prev`` (a norm or a linear layer) by s, in place."""
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s[:, None].to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
        return
    offset = getattr(prev, "offset", 0.0)  # Gemma's norms scale by (offset + weight)
    prev.weight.copy_(((prev.weight.float() + offset) / s - offset).to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias.dtype))


@torch.no_grad()
def search_scale(x: torch.Tensor, layers: list[nn.Linear], judge: nn.Module | None, bits: int, group_size: int,
                 grid: int = 20) -> tuple[torch.Tensor, float]:
    """The per-input-channel scale s = mean|x|^alpha (normalised to a geometric mean of 1) whose quantized layers
    give the smallest output error on x [n, in], alpha over a grid of ``grid`` points in [0, 1); the scale and
    its error (alpha = 0, s = 1, is plain round to nearest)."""
    x = x.float()
    mean = x.abs().mean(dim=0).clamp(min=1e-8)
    weights = [lay.weight.detach().float() for lay in layers]

    def outputs(ws):
        if judge is None:
            return torch.cat([x @ w.t() for w in ws], dim=1)
        saved = [lay.weight.data for lay in layers]
        try:
            for lay, w in zip(layers, ws, strict=True):
                lay.weight.data = w.to(saved[0].dtype)
            return judge(x.to(saved[0].dtype)).float()
        finally:
            for lay, w in zip(layers, saved, strict=True):
                lay.weight.data = w

    want = outputs(weights)
    best, best_err = torch.ones_like(mean), float("inf")
    for k in range(grid):
        s = mean ** (k / grid)
        s = s / (s.max() * s.min()).sqrt()
        got = outputs([fake_quant(w * s, bits, group_size) / s for w in weights])
        err = float((got - want).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best, best_err


@torch.no_grad()
def search_clip(x: torch.Tensor, w: torch.Tensor, bits: int, group_size: int, grid: int = 20,
                shrink: float = 0.5) -> torch.Tensor:
    """Per (output row, group) the clipping range max|w| x r, r from 1 down to 1 - shrink, whose quantized group
    gives the smallest error in that group's share of the output on x [n, in]; max_abs [out, groups]."""
    out_f, in_f = w.shape
    groups = -(in_f // -group_size)
    pad = groups * group_size - in_f
    wg = torch.nn.functional.pad(w.float(), (0, pad)).view(out_f, groups, group_size)
    xg = torch.nn.functional.pad(x.float(), (0, pad)).view(-1, groups, group_size)  # [n, groups, g]
    want = torch.einsum("ngk,ogk->nog", xg, wg)  # each group's share of each output [n, out, groups]
    top = wg.abs().amax(dim=-1)  # [out, groups]
    best, best_err = top.clone(), torch.full_like(top, float("inf"))
    for k in range(int(grid * shrink) + 1):
        max_abs = top * (1 - k / grid)
        q = torch.nn.functional.pad(fake_quant(w, bits, group_size, max_abs), (0, pad)).view(out_f, groups, group_size)
        err = (torch.einsum("ngk,ogk->nog", xg, q) - want).pow(2).mean(dim=0)  # [out, groups]
        better = err < best_err
        best, best_err = torch.where(better, max_abs, best), torch.where(better, err, best_err)
    return best


def quantize_awq(model: nn.Module, ids: torch.Tensor, *, bits: int = 4, group_size: int = 128, grid: int = 20,
                 clip: bool = True, search_tokens: int = 4096, micro_batch: int = 8, progress: bool = True
                 ) -> nn.Module:
    """AWQ over every linear layer of a pre-norm CausalLM's blocks, in place, from calibration ids [N, T]: per
    block, the scales searched and folded (the float block's outputs checked unchanged), clipping searched, then
    round to nearest into GPTQLinear layers; the next block sees this block's quantized outputs. The searches use
    ``search_tokens`` calibration tokens drawn at random (all of them feed the block outputs)."""
    cfg = model.config
    if cfg.norm_placement not in ("pre", "sandwich") or cfg.residual != "sequential" or cfg.n_experts:
        raise ValueError("AWQ folds its scales into the norm before each group of layers: it needs pre-norm blocks "
                         "without parallel residuals or experts; use GPTQ for this model")
    pick = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(0))[:search_tokens]

    def prepare(cal: Calibration, i: int, layers: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
        """Search and fold block i's scales; the layers' inputs as the scaled layers now see them."""
        feats = _inputs(cal, i, layers, pick)
        before = cal.forward(i, cal.inputs[:2])
        for prev, group, judge in groups_of(model.blocks[i], f"blocks.{i}."):
            s, _ = search_scale(feats[group[0]], [layers[n] for n in group], judge, bits, group_size, grid)
            fold(prev, s)
            with torch.no_grad():
                for n in group:
                    layers[n].weight.mul_(s.to(layers[n].weight.dtype))
                    feats[n] = feats[n] / s.to(feats[n].dtype)
        after = cal.forward(i, cal.inputs[:2])
        drift = float((after.float() - before.float()).norm() / before.float().norm().clamp(min=1e-30))
        if drift > (1e-3 if before.dtype == torch.float32 else 3e-2):  # 16-bit weights round once more when scaled
            raise ValueError(f"blocks.{i}: folding the AWQ scales changed the float block's output; this block "
                             "layout is not one AWQ can fold into (use GPTQ)")
        return feats

    def codes(name: str, lin: nn.Linear, feats: dict[str, torch.Tensor]):
        # clipping is judged on 1024 of the tokens (the paper's implementation uses 512)
        max_abs = search_clip(feats[name][:1024], lin.weight, bits, group_size, grid) if clip else None
        return (*rtn(lin.weight, bits, group_size, max_abs), torch.arange(lin.in_features) // group_size)

    return quantize_blocks(model, ids, prepare, codes, bits=bits, group_size=group_size, micro_batch=micro_batch,
                           progress=progress, desc="awq", settings={"desc_act": False, "sym": False,
                                                                    "quantizer": "awq"})


def _inputs(cal: Calibration, i: int, layers: dict[str, nn.Linear], pick: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inputs [search tokens, in] each linear layer of block i sees, at the calibration tokens ``pick``
    (indices into the N x T token positions), in pick's order: each micro-batch keeps only its picked rows, so
    the inputs of the other calibration tokens are never held."""
    pick, order = pick.sort()
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    done = dict.fromkeys(layers, 0)  # token positions each layer has been shown so far

    def take(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])  # [micro tokens, in]
            lo, hi = done[name], done[name] + x.shape[0]
            rows = pick[(pick >= lo) & (pick < hi)] - lo
            seen[name].append(x[rows].clone())
            done[name] = hi
        return hook

    handles = [lay.register_forward_pre_hook(take(n)) for n, lay in layers.items()]
    try:
        cal.forward(i)
    finally:
        for h in handles:
            h.remove()
    back = torch.argsort(order)  # rows came in position order; pick's (random) order, so any prefix is a sample
    return {n: torch.cat(v)[back] for n, v in seen.items()}
