"""4-bit NormalFloat (NF4) and FP4 block quantization, and the 8-bit dynamic map its double quantization uses.

NF4 (Dettmers et al. 2023, "QLoRA", section 3): a weight tensor is flattened and cut into blocks of 64; each
block keeps its absolute maximum (fp32) and every value x / absmax in [-1, 1] becomes the index of the nearest of
16 levels. The levels are quantiles of N(0, 1) scaled to [-1, 1], with an exact zero, so each level is about
equally likely for normally distributed weights. Two indices share a byte, the first element in the high nibble.

Double quantization (same paper, section 3): the fp32 absmax values (0.5 bit per weight at blocks of 64) are
themselves quantized: their mean is subtracted, then blocks of 256 are quantized to 8 bits with the signed
dynamic map of Dettmers (2015, "8-Bit Approximations for Parallelism in Deep Learning"), keeping one fp32
absmax per 256. In all 4 + 8/64 + 32/(64 * 256) = 4.127 bits per weight.

Everything here is computed to give the bytes bitsandbytes' ``quantize_4bit`` gives (tests/test_nf4.py checks it
value by value): the same fp32 arithmetic (scale by 1/absmax, clamp), ties between two levels going to the lower
one, and for the 8-bit map bitsandbytes' CPU rule (the scaled value is first rounded onto a grid of 65536 steps
over [-1, 1], then the nearest level of that grid point is taken; on CUDA the nearest level of the value itself,
which differs by one level for values within 1/32768 of a midpoint).
"""

from __future__ import annotations

import torch

# NF4's 16 levels as the QLoRA paper's appendix E lists them (quantiles of N(0, 1) at offset 0.9677, scaled so the
# extremes are -1 and 1). Computing them with torch.special.ndtri agrees to 2e-7 (tested); the published fp32
# values are kept so the codes equal every other implementation's.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)
# FP4 in bitsandbytes' encoding: a sign bit, then 3 bits whose values (bit pattern 0..7) are
# 0, 0.0625 (subnormal), 8, 12, 4, 6, 2, 3, all divided by the largest, 12.
_FP4_MAGNITUDES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
NESTED_BLOCKSIZE = 256  # the absmax values are quantized in blocks of this many
_GRID = 65536  # the 8-bit rule's grid over [-1, 1]


def levels(quant_type: str) -> torch.Tensor:
    """The 16 fp32 levels of ``quant_type`` ("nf4" or "fp4"), indexed by the 4-bit code."""
    if quant_type == "nf4":
        return torch.tensor(NF4_LEVELS, dtype=torch.float32)
    if quant_type == "fp4":
        mags = torch.tensor(_FP4_MAGNITUDES, dtype=torch.float32) / 12
        return torch.cat([mags, 0.0 - mags])  # code 8 + j is -(code j), the sign the top bit (0 - 0 is +0, as theirs)
    raise ValueError(f"quant_type={quant_type!r} must be one of {', '.join(QUANT_TYPES)}")


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 256 levels of the 8-bit dynamic type (Dettmers 2015), sorted: signed in [-1, 1], or unsigned in [0, 1]
    (for values that are never negative, as Adam's second moment).

    A level is (sign x) 10^-e x fraction for a decimal exponent e in 0..6: exponent 6 - i holds 2^i fractions
    (2^(i+1) unsigned, the sign bit being free), the midpoints of that many + 1 equal steps over [0.1, 1], so
    small magnitudes get a fine grid and large ones a coarse one. With 0 and 1 that is 256 levels, computed in
    fp32 (as bitsandbytes' create_dynamic_map does, so the levels are bit-identical)."""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** (i + (0 if signed else 1)) + 1, dtype=torch.float32)
        fractions = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        values += fractions.tolist() + ((-fractions).tolist() if signed else [])
    return torch.tensor(sorted(values), dtype=torch.float32)


def _blocks(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x flattened to fp32 and padded with zeros to whole blocks [blocks, blocksize], and the absmax [blocks]
    (of the real values: a zero pad never raises it)."""
    flat = x.reshape(-1).float()
    n_blocks = -(flat.numel() // -blocksize)
    padded = torch.nn.functional.pad(flat, (0, n_blocks * blocksize - flat.numel()))
    grid = padded.view(n_blocks, blocksize)  # [blocks, blocksize]
    return grid, grid.abs().amax(dim=1)


def quantize_4bit(w: torch.Tensor, blocksize: int = 64, quant_type: str = "nf4") -> tuple[torch.Tensor, torch.Tensor]:
    """Any float tensor -> (codes uint8 [(n + 1) // 2, 1], absmax fp32 [ceil(n / blocksize)]).

    Each value x of block b becomes the nearest level to clamp(x * (1 / absmax_b), -1, 1) (a tie goes to the
    lower level); codes are packed two a byte over the flattened tensor, the first in the high nibble, an odd
    count padded with the code of 0. The layout of bitsandbytes' Params4bit."""
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize={blocksize} must be one of {BLOCKSIZES}")
    code = levels(quant_type)
    order = torch.argsort(code)  # fp4's levels are not sorted by code: search the sorted ones, map back
    midpoints = (code[order[:-1]] + code[order[1:]]) / 2
    grid, absmax = _blocks(w, blocksize)
    scale = absmax.clamp(min=1e-38)[:, None]
    scaled = grid * (1.0 / scale)
    if w.numel() % blocksize:  # bitsandbytes divides the last, partial block (one ulp from the product)
        scaled[-1] = grid[-1] / scale[-1]
    scaled = scaled.clamp(-1, 1).reshape(-1)[: w.numel()]
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = order[torch.bucketize(scaled, midpoints)].to(torch.uint8)  # bucketize: x == midpoint -> the lower level
    return ((q[0::2] << 4) | q[1::2]).unsqueeze(1), absmax


def unpack_4bit(codes: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The 4-bit codes of flattened elements start..stop (all by default) as int64 [stop - start]."""
    stop = codes.numel() * 2 if stop is None else stop
    raw = codes.reshape(-1)[start // 2: (stop + 1) // 2]
    pairs = torch.stack((raw >> 4, raw & 0xF), dim=1).reshape(-1)  # [2 x bytes]: high nibble first
    return pairs[start % 2: start % 2 + stop - start].long()


def block_span(shape: tuple[int, ...], blocksize: int, rows: slice = slice(None)) -> tuple[int, int, int, int]:
    """(first element, end element, first block, end block) of the leading-dimension rows ``rows`` of a tensor
    of ``shape`` flattened into blocks: what a dequantization of those rows reads."""
    width = 1
    for d in shape[1:]:
        width *= d
    first, last, _ = rows.indices(shape[0])
    start, stop = first * width, max(first, last) * width
    return start, stop, start // blocksize, -(-stop // blocksize)


def dequantize_4bit(codes: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], code: torch.Tensor,
                    blocksize: int = 64, dtype: torch.dtype = torch.float32, *, rows: slice = slice(None),
                    first_block: int = 0) -> torch.Tensor:
    """code[level] x absmax in fp32, then ``dtype``: the tensor of ``shape`` (or the leading-dimension rows
    ``rows`` of it). ``code`` is the 16 levels (``levels(quant_type)``, or a file's quant_map); absmax fp32
    (absmax_of gives a double-quantized one), of every block or of the blocks from ``first_block`` on."""
    start, stop, _, _ = block_span(shape, blocksize, rows)
    idx = unpack_4bit(codes, start, stop)
    values = code.float()[idx]
    if start % blocksize == 0 and (stop - start) % blocksize == 0:  # whole blocks: scale by rows of the grid
        scale = absmax[start // blocksize - first_block: stop // blocksize - first_block, None]
        out = (values.view(-1, blocksize) * scale).reshape(-1)
    else:  # rows that cut blocks: one scale per element
        out = values * absmax[torch.arange(start, stop, device=codes.device) // blocksize - first_block]
    return out.reshape(-1, *shape[1:]).to(dtype)


_TABLES: dict[bytes, torch.Tensor] = {}


def _grid_table(code: torch.Tensor) -> torch.Tensor:
    """For each of the 65536 grid points over [-1, 1], the index of the nearest of the sorted ``code`` levels
    (a tie to the lower); built once per code."""
    key = code.float().cpu().numpy().tobytes()
    if key not in _TABLES:
        levels_sorted = code.float().cpu()
        midpoints = (levels_sorted[:-1] + levels_sorted[1:]) * 0.5
        steps = -1.0 + (2.0 * torch.arange(_GRID, dtype=torch.float32)) / (_GRID - 1)
        _TABLES[key] = torch.searchsorted(midpoints, steps, side="left").to(torch.uint8)
    return _TABLES[key].to(code.device)


def quantize_8bit(x: torch.Tensor, code: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (codes uint8 [n], absmax fp32 [ceil(n / blocksize)]): blockwise quantization to the 256 sorted
    ``code`` levels with bitsandbytes' CPU rule (see the module docstring); an all-zero block gets code 0."""
    grid, absmax = _blocks(x, blocksize)
    scaled = (grid * (1.0 / absmax)[:, None]).clamp(-1, 1)
    point = ((scaled + 1.0) * 0.5 * (_GRID - 1) + 0.5).to(torch.int32)  # truncation after + 0.5: round half up
    point = point.masked_fill_((absmax == 0)[:, None], 0).clamp_(0, _GRID - 1)  # 0/0 in an all-zero block
    return _grid_table(code)[point].reshape(-1)[: x.numel()], absmax


def dequantize_8bit(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                    blocksize: int = NESTED_BLOCKSIZE) -> torch.Tensor:
    """code[q] x absmax of its block, fp32 [n]."""
    values, _ = _blocks(code.float()[q.reshape(-1).long()], blocksize)  # [blocks, blocksize], zero padded
    return (values * absmax.float()[:, None]).reshape(-1)[: q.numel()]


def compress_absmax(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization: fp32 absmax [blocks] -> (codes uint8 [blocks], nested absmax fp32 [blocks / 256],
    offset fp32 []): absmax - mean(absmax) in 8-bit dynamic blocks of 256."""
    offset = absmax.mean()
    q, nested = quantize_8bit(absmax - offset, dynamic_map())
    return q, nested, offset


def absmax_of(q: torch.Tensor, nested_absmax: torch.Tensor, offset: torch.Tensor,
              code: torch.Tensor | None = None, *, blocks: slice = slice(None)) -> torch.Tensor:
    """The fp32 absmax values a double-quantized state stands for (the inverse of compress_absmax); of the
    blocks ``blocks`` only (a dequantization of some rows needs no more)."""
    code = dynamic_map() if code is None else code
    first, last, _ = blocks.indices(q.numel())
    nested = nested_absmax.float()[torch.arange(first, last, device=q.device) // NESTED_BLOCKSIZE]
    return code.float()[q[first:last].long()] * nested + offset
