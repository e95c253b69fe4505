"""llama.cpp's (ggml's) block formats, decoded and encoded in PyTorch.

Every format cuts a row into blocks and stores per block a float16 scale (and for some a minimum) and the
codes. Legacy formats have 32 values a block; the k-quants (Q4_K, Q5_K, Q6_K) have super-blocks of 256 made
of 16- or 32-value sub-blocks whose 6- or 8-bit scales are themselves scaled by the super-block's float16.

    Q8_0  d, 32 x int8                    x = d q
    Q4_0  d, 16 bytes (two codes a byte)  x = d (q - 8)        q in 0..15
    Q4_1  d, m, 16 bytes                  x = d q + m
    Q5_0  d, 4 bytes of 5th bits, 16      x = d (q - 16)       q in 0..31
    Q5_1  d, m, 4 + 16 bytes              x = d q + m
    Q4_K  d, dmin, 12 bytes of 6-bit (scale, min) x 8, 128 bytes      x = (d s_j) q - (dmin m_j)
    Q5_K  as Q4_K plus 32 bytes of 5th bits
    Q6_K  128 bytes low 4 bits, 64 bytes high 2 bits, 16 x int8 scales, d    x = (d s_j) (q - 32)

In a legacy block the first 16 values sit in the low nibbles of the 16 code bytes and the last 16 in the
high nibbles. Arithmetic is float32 in the order ggml's reference C code uses, so results are bit-identical
to it (and to the `gguf` package's numpy version, which the tests compare against). Encoders exist for the
formats groundup writes (Q8_0, Q4_0, Q4_1) with ggml's rounding: round half away from zero for Q8_0,
truncation of x / d + 8.5 for Q4_0 and of (x - min) / d + 0.5 for Q4_1.
"""

from __future__ import annotations

import torch

# type id (GGML_TYPE_*) -> (name, values a block, bytes a block)
FORMATS: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 8: ("Q8_0", 32, 34), 2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
}
TYPE_IDS = {name: tid for tid, (name, _, _) in FORMATS.items()}


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Bytes [..., 2] (little endian) -> float16 values [...] as float32."""
    return b.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Legacy codes [n, 16] -> [n, 32]: the low nibbles are values 0..15, the high nibbles 16..31."""
    return torch.cat((qs & 0xF, qs >> 4), dim=-1)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """Q5 fifth bits: 4 bytes [n, 4] (a little-endian uint32) -> [n, 32] of 0 or 1, bit j for value j."""
    bits = torch.arange(8, device=qh.device)
    return ((qh[..., :, None] >> bits) & 1).flatten(-2)  # byte b bit k -> value 8b + k


def _scale_min_k4(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K: 12 bytes [n, 12] -> 8 six-bit scales and 8 six-bit minima [n, 8] (ggml's get_scale_min_k4)."""
    sc = sc.long()
    lo_s, lo_m = sc[:, 0:4] & 63, sc[:, 4:8] & 63  # sub-blocks 0..3
    hi_s = (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)  # sub-blocks 4..7
    hi_m = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return torch.cat((lo_s, hi_s), 1).float(), torch.cat((lo_m, hi_m), 1).float()


def _k_codes(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K / Q5_K low nibbles: 128 bytes [n, 128] -> [n, 8, 32]: 64-value chunk c takes bytes 32c..32c+31,
    low nibbles for sub-block 2c, high nibbles for 2c + 1."""
    q = qs.view(-1, 4, 32)
    return torch.stack((q & 0xF, q >> 4), dim=2).reshape(-1, 8, 32)


def dequantize(data: torch.Tensor, type_id: int, n: int) -> torch.Tensor:
    """Raw bytes (uint8) of `n` values of format `type_id` -> float32 [n]."""
    if type_id not in FORMATS:
        raise ValueError(f"ggml type {type_id} is not supported (supported: "
                         f"{', '.join(f'{v[0]} ({k})' for k, v in FORMATS.items())})")
    name, per, size = FORMATS[type_id]
    if n % per or data.numel() != n // per * size:
        raise ValueError(f"{name}: {data.numel()} bytes do not hold {n} values ({size} bytes per {per})")
    b = data.reshape(n // per, size)
    if name == "F32":
        return b.contiguous().view(torch.float32).reshape(n)
    if name in ("F16", "BF16"):
        return b.contiguous().view(torch.float16 if name == "F16" else torch.bfloat16).float().reshape(n)
    if name == "Q8_0":
        return (_f16(b[:, :2])[:, None] * b[:, 2:].contiguous().view(torch.int8).float()).reshape(n)
    if name == "Q4_0":
        return (_f16(b[:, :2])[:, None] * (_nibbles(b[:, 2:]).float() - 8)).reshape(n)
    if name == "Q4_1":
        return (_f16(b[:, :2])[:, None] * _nibbles(b[:, 4:]).float() + _f16(b[:, 2:4])[:, None]).reshape(n)
    if name == "Q5_0":
        q = _nibbles(b[:, 6:]) | (_high_bits(b[:, 2:6]) << 4)
        return (_f16(b[:, :2])[:, None] * (q.float() - 16)).reshape(n)
    if name == "Q5_1":
        q = _nibbles(b[:, 8:]) | (_high_bits(b[:, 4:8]) << 4)
        return (_f16(b[:, :2])[:, None] * q.float() + _f16(b[:, 2:4])[:, None]).reshape(n)
    if name in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b[:, :2])[:, None], _f16(b[:, 2:4])[:, None]
        s, m = _scale_min_k4(b[:, 4:16])
        q = _k_codes(b[:, 16:144] if name == "Q4_K" else b[:, 48:176])  # [blocks, 8, 32]
        if name == "Q5_K":  # fifth bit of value l of sub-block j: bit j of qh[l]
            qh = b[:, 16:48]  # [blocks, 32]
            q = q | (((qh[:, None, :] >> torch.arange(8, device=b.device)[None, :, None]) & 1) << 4)
        return ((d * s)[..., None] * q.float() - (dmin * m)[..., None]).reshape(n)
    # Q6_K: halves of 128 values; in each, value l (0..31) of quarter k takes 4 low bits from ql and 2 from qh
    ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].contiguous().view(torch.int8).float().reshape(-1, 2, 8)
    d = _f16(b[:, 208:210])[:, None, None]
    low = torch.stack((ql[..., :32] & 0xF, ql[..., 32:] & 0xF, ql[..., :32] >> 4, ql[..., 32:] >> 4), dim=2)
    high = torch.stack([(qh >> (2 * k)) & 3 for k in range(4)], dim=2)  # [blocks, 2, 4, 32]
    q = (low | (high << 4)).float() - 32
    sc = scales.reshape(-1, 2, 4, 2)[..., None].expand(-1, 2, 4, 2, 16).reshape(-1, 2, 4, 32)  # scale of l // 16
    return ((d[..., None] * sc) * q).reshape(n)


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds them to even)."""
    a = x.abs()
    fl = a.floor()
    return torch.copysign(fl + (a - fl >= 0.5).float(), x)


def quantize(x: torch.Tensor, type_id: int) -> torch.Tensor:
    """float values [n] (n a multiple of 32) -> the raw bytes of Q8_0 or Q4_0 (or F32/F16/BF16), uint8."""
    name = FORMATS.get(type_id, ("?",))[0]
    x = x.float().reshape(-1)
    if name in ("F32", "F16", "BF16"):
        dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]
        return x.to(dt).view(torch.uint8)
    if name not in ("Q8_0", "Q4_0", "Q4_1"):
        raise ValueError(f"writing ggml type {name} ({type_id}) is not supported: use Q8_0, Q4_0, Q4_1, F16, BF16 "
                         "or F32")
    if x.numel() % 32:
        raise ValueError(f"{name} needs a multiple of 32 values, got {x.numel()}")
    blocks = x.view(-1, 32)
    if name == "Q8_0":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = _round_away(blocks * inv).to(torch.int8)
        return torch.cat((d.half().view(torch.uint8), q.view(torch.uint8)), dim=1).reshape(-1)
    if name == "Q4_1":  # minimum and step of each block; codes truncate (x - min) / d + 0.5, at most 15
        lo, hi = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
        d = (hi - lo) / 15
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = ((blocks - lo) * inv + 0.5).trunc().clamp(0, 15).to(torch.uint8)
        packed = q[:, :16] | (q[:, 16:] << 4)
        return torch.cat((d.half().view(torch.uint8), lo.half().view(torch.uint8), packed), dim=1).reshape(-1)
    # Q4_0: the value of largest magnitude, with its sign, maps to code 0 (-8 d)
    biggest = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))
    d = biggest / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = (blocks * inv + 8.5).trunc().clamp(0, 15).to(torch.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    return torch.cat((d.half().view(torch.uint8), packed), dim=1).reshape(-1)
