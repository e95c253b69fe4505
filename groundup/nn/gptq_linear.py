"""GPTQLinear: integer codes with per-group scales and integer zero points, stored in the GPTQ checkpoint layout
that transformers, AutoGPTQ and GPTQModel read (groundup.quant.gptq and .awq make them).

    w[o, i] = scales[g, o] x (q[i, o] - z[g, o]),   g = g_idx[i]

Buffers, as the checkpoints name them: ``qweight`` int32 [in x bits / 32, out] (the codes of 32 consecutive
inputs in ``bits`` int32 words, a contiguous little-endian bit stream: 8 nibbles a word at 4 bits), ``qzeros``
int32 [groups, out x bits / 32] (the zero points packed the same way along the outputs, stored minus one in
the original "gptq" format, as is in "gptq_v2"), ``scales`` fp16 [groups, out], ``g_idx`` int32 [in] (the group
of each input; with act-order, Frantar et al.'s descending-Hessian order, groups are not contiguous). A group
size that does not divide the input width leaves a last, partial group, as GPTQ does.

Products: at 4 bits torch's int4 CPU kernel reads (q - 8) s + zf with zf = (8 - z) s, the inputs reordered so
that each group is contiguous; or the weight is dequantized by blocks of output rows (nn/qproduct.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .qproduct import DispatchedLinear

BITS = (2, 3, 4, 8)
FORMATS = ("gptq", "gptq_v2")


def run_length(bits: int) -> tuple[int, int]:
    """(codes, int32 words) of one packing run: 32 / bits codes a word, or 32 codes in 3 words at 3 bits."""
    return (32 // bits, 1) if 32 % bits == 0 else (32, bits)


def pack_bits(q: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Integer codes (0 .. 2^bits - 1) -> int32 words along ``dim``: the codes as one contiguous little-endian bit
    stream, code k at bit bits x k (the layout of GPTQ's qweight and qzeros)."""
    q = q.movedim(dim, 0).to(torch.int64)
    n, (per, words_per) = q.shape[0], run_length(bits)
    if n % per:
        raise ValueError(f"{n} codes along the packed dimension: at {bits} bits it must be a multiple of {per}")
    runs = q.reshape(n // per, per, *q.shape[1:])  # [runs, codes a run, ...]
    words = torch.zeros(n // per, words_per, *q.shape[1:], dtype=torch.int64, device=q.device)
    for k in range(per):
        word, shift = divmod(bits * k, 32)
        words[:, word] |= (runs[:, k] << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # the code straddles two words (3 bits)
            words[:, word + 1] |= runs[:, k] >> (32 - shift)
    words = torch.where(words >= 2**31, words - 2**32, words)  # as int32 bit patterns
    return words.reshape(n // per * words_per, *q.shape[1:]).to(torch.int32).movedim(0, dim)


def unpack_bits(words: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """The inverse of pack_bits: int32 words -> int64 codes along ``dim``."""
    w = words.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF
    per, words_per = run_length(bits)
    runs = w.reshape(w.shape[0] // words_per, words_per, *w.shape[1:])
    mask = (1 << bits) - 1
    codes = []
    for k in range(per):
        word, shift = divmod(bits * k, 32)
        value = runs[:, word] >> shift
        if shift + bits > 32:
            value = value | (runs[:, word + 1] << (32 - shift))
        codes.append(value & mask)
    out = torch.stack(codes, dim=1)  # [runs, 32, ...]
    return out.reshape(-1, *w.shape[1:]).movedim(0, dim)


class GPTQLinear(DispatchedLinear):
    """y = x W^T + b with W in ``bits``-bit integer codes, a scale and an integer zero point per group of
    ``group_size`` inputs (see the module docstring)."""

    KERNEL = "int4mm"  # at 4 bits only: has_kernel

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 group_size: int = 128, checkpoint_format: str = "gptq", device=None) -> None:
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits={bits} must be one of {BITS}")
        per = run_length(bits)[0]
        if in_features % per or out_features % per:
            raise ValueError(f"GPTQ layout at {bits} bits: in_features={in_features} and out_features={out_features} "
                             f"must be multiples of {per}")
        if checkpoint_format not in FORMATS:
            raise ValueError(f"checkpoint_format={checkpoint_format!r} must be one of {FORMATS}")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.checkpoint_format = checkpoint_format
        groups = -(in_features // -group_size)  # a last, partial group when group_size does not divide
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32,
                                                    device=device))
        self.register_buffer("qzeros", torch.zeros(groups, out_features * bits // 32, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(groups, out_features, dtype=torch.float16, device=device))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32, device=device) // group_size)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._kernel: tuple | None = None
        self._balanced: tuple | None = None

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, *,
                   bits: int, group_size: int, bias: torch.Tensor | None = None) -> GPTQLinear:
        """Codes [out, in] (0 .. 2^bits - 1), scales [out, groups] (fp16 values), integer zeros [out, groups] and
        g_idx [in] -> the layer; the zeros decide the format (a zero point of 0 cannot be stored minus one)."""
        out_f, in_f = codes.shape
        fmt = "gptq" if int(zeros.min()) >= 1 else "gptq_v2"
        layer = cls(in_f, out_f, bias is not None, bits=bits, group_size=group_size, checkpoint_format=fmt,
                    device=codes.device)
        layer.qweight = pack_bits(codes.t(), bits, dim=0)  # [in, out] -> [in bits / 32, out]
        stored = zeros - 1 if fmt == "gptq" else zeros
        layer.qzeros = pack_bits(stored.t().contiguous() & ((1 << bits) - 1), bits, dim=1)  # [groups, out bits / 32]
        layer.scales = scales.t().contiguous().to(torch.float16)
        layer.g_idx = g_idx.to(torch.int32)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The packed codes (as the other quantized layers' ``weight``: code that asks a layer for its weight's
        device, or wraps it with an adapter, works unchanged)."""
        return self.qweight

    def set_format(self, checkpoint_format: str) -> None:
        """Store the zero points the way ``checkpoint_format`` does (minus one in "gptq", as is in "gptq_v2")."""
        if checkpoint_format not in FORMATS:
            raise ValueError(f"checkpoint_format={checkpoint_format!r} must be one of {FORMATS}")
        z = self.zeros()
        if checkpoint_format == "gptq" and int(z.min()) < 1:
            raise ValueError("a zero point of 0 cannot be stored minus one: keep checkpoint_format 'gptq_v2'")
        stored = z - 1 if checkpoint_format == "gptq" else z
        self.qzeros = pack_bits(stored & ((1 << self.bits) - 1), self.bits, dim=1)
        self.checkpoint_format = checkpoint_format
        self._kernel = None

    def zeros(self) -> torch.Tensor:
        """The integer zero points, int64 [groups, out]."""
        z = unpack_bits(self.qzeros, self.bits, dim=1)
        return z + 1 if self.checkpoint_format == "gptq" else z

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, rows: slice = slice(None)) -> torch.Tensor:
        """The weight [out, in] (or its output rows ``rows``): scales x (codes - zeros), in fp32 then ``dtype``."""
        first, last, _ = rows.indices(self.out_features)
        codes = unpack_bits(self.qweight[:, first:last], self.bits, dim=0)  # [in, rows]
        g = self.g_idx.long()
        z = self.zeros()[:, first:last]
        s = self.scales[:, first:last].float()
        w = (codes - z[g]).float() * s[g]  # [in, rows]
        return w.t().to(dtype)

    @property
    def has_kernel(self) -> bool:
        """Whether torch's int4 CPU kernel serves this layer: 4 bits, output rows in 16s, and every group
        group_size inputs (so that reordered inputs put each group together)."""
        if self.bits != 4 or self.out_features % 16 or self.group_size not in (32, 64, 128, 256):
            return False
        if self._balanced is None or self._balanced[0] is not self.g_idx:  # checked once per g_idx
            counts = torch.bincount(self.g_idx.long(), minlength=-(self.in_features // -self.group_size))
            self._balanced = (self.g_idx, bool((counts == self.group_size).all()))
        return self._balanced[1]

    def _kernel_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input order putting each group together, codes in torch's int4 CPU layout, scales and zeros)."""
        if self._kernel is None or self._kernel[0] is not self.qweight:
            order = torch.argsort(self.g_idx.long(), stable=True)
            codes = unpack_bits(self.qweight, 4, dim=0)[order].t().contiguous().to(torch.int32)  # [out, in]
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 8)
            s = self.scales.float()  # [groups, out]
            zf = (8 - self.zeros()).float() * s  # the kernel computes (q - 8) s + zf
            sz = torch.stack((s, zf), dim=-1).contiguous().to(torch.bfloat16)  # [groups, out, 2]
            self._kernel = (self.qweight, order, packed, sz)
        return self._kernel[1], self._kernel[2], self._kernel[3]

    def prepare(self) -> None:
        if self.has_kernel:
            self._kernel_weights()

    def _kernel_product(self, x: torch.Tensor) -> torch.Tensor:
        order, packed, sz = self._kernel_weights()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x[:, order].contiguous(), packed, self.group_size, sz)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}")

