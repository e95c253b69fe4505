"""The native kernels against a reference computed from gguf.quants.dequantize: every format, every
instruction-set variant this CPU runs, with the same 8-bit rounding of the activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groundup import kernels
from groundup.kernels.ggml_quants import FORMATS, TYPE_IDS

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels not built (no compiler)")

HALVES = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q4_K": (0, 2), "Q5_K": (0, 2),
          "Q6_K": (208,)}  # byte offsets of each block's fp16 scale (and minimum)
FORMAT_NAMES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16", "F32"]


def random_blocks(name: str, rows: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 [rows, row bytes]: random codes, finite small scales."""
    _, per, size = FORMATS[TYPE_IDS[name]]
    if name in ("F16", "BF16", "F32"):
        dt = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]
        return torch.randn(rows, k, generator=gen).to(dt).view(torch.uint8).reshape(rows, -1)
    b = torch.randint(0, 256, (rows, k // per, size), generator=gen, dtype=torch.uint8)
    for off in HALVES[name]:
        scale = (torch.rand(rows, k // per, generator=gen) * 0.02 + 0.001).half()
        b[..., off:off + 2] = scale.view(torch.uint8).reshape(rows, k // per, 2)
    return b.reshape(rows, -1)


def dequant(name: str, blocks: torch.Tensor, k: int) -> torch.Tensor:
    """float64 [rows, k] by the gguf package's numpy decoder."""
    raw = blocks.numpy()
    out = gguf_quants.dequantize(raw, GGMLQuantizationType[name])
    return torch.from_numpy(np.asarray(out, dtype=np.float64)).reshape(blocks.shape[0], k)


def act_a8(x: torch.Tensor):
    """The 32-value activation blocks: (d, s, q) with d and s rounded through fp16, codes rounded to even."""
    b = x.view(x.shape[0], -1, 32)
    amax = b.abs().amax(-1)
    d = amax / 127
    inv = torch.where(amax != 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    q = torch.round(b * inv[..., None])
    return d.half().float(), (d * q.sum(-1)).half().float(), q


def act_ak(x: torch.Tensor):
    """The 256-value super-blocks: (d, q, sums of 16) from the signed value of largest magnitude."""
    b = x.view(x.shape[0], -1, 256)
    big = b.gather(-1, b.abs().argmax(-1, keepdim=True)).squeeze(-1)
    iscale = torch.where(big != 0, torch.tensor(-127.0) / big, torch.zeros_like(big))
    q = torch.round(b * iscale[..., None]).clamp(max=127)
    d = torch.where(big != 0, 1 / iscale, torch.zeros_like(big))
    return d, q, q.view(*q.shape[:2], 16, 16).sum(-1)


def reference(name: str, x: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, bound): y [M, N] in float64 from the dequantized weights and the rounded activations; bound, the
    sum of |terms|, scales the float tolerance."""
    k = x.shape[1]
    w = dequant(name, blocks, k)
    if name in ("F16", "BF16", "F32"):
        a = x.double()
        return a @ w.T, a.abs() @ w.abs().T
    if name.endswith("_K"):
        d, q, _ = act_ak(x)
        a = (d[..., None].double() * q.double()).reshape(x.shape)
        return a @ w.T, a.abs() @ w.abs().T
    d, s, q = act_a8(x)
    a = (d[..., None].double() * q.double()).reshape(x.shape)
    y = a @ w.T
    if name in ("Q4_1", "Q5_1"):  # the kernel takes the minimum's term from s = fp16(d sum q), as llama.cpp does
        per = FORMATS[TYPE_IDS[name]][2]
        m = blocks.view(blocks.shape[0], -1, per)[..., 2:4].contiguous().view(torch.float16).squeeze(-1).double()
        y = y + (s.double() - d.double() * q.sum(-1).double()) @ m.T
    return y, a.abs() @ w.abs().T




@pytest.mark.parametrize("name", FORMAT_NAMES)
@pytest.mark.parametrize("m", [1, 3, 6])
def test_product_equals_reference_every_variant(name, m):
    k = 512 if name.endswith("_K") else 352  # 11 blocks: eight at a time and three alone
    gen = torch.Generator().manual_seed(hash((name, m)) % 2**31)
    blocks = random_blocks(name, 37, k, gen)
    x = torch.randn(m, k, generator=gen)
    x[0, :5] = 0.0  # zeros inside a block, and (below) a block of zeros
    x[-1, 32:64] = 0.0 if k >= 64 else x[-1, 32:64]
    ref, bound = reference(name, x, blocks)
    before = kernels.variant()
    try:
        for v in kernels.variants():
            kernels.use(v)
            y = kernels.ggml_mm(x, blocks, TYPE_IDS[name]).double()
            err = ((y - ref).abs() / (bound + 1e-6)).max().item()
            assert err < 2e-6, f"{name} variant {v}: relative error {err:.2e}"
    finally:
        kernels.use(before)


@pytest.mark.parametrize("kind", [1, 2])
def test_activation_blocks_exact_every_variant(kind):
    k = 512
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(kind)) * 3
    x[1] = 0.0
    x[2, 7] = 1e4  # one dominant value: the rest round towards zero
    x[3, :256] *= -1
    before = kernels.variant()
    try:
        for v in kernels.variants():
            kernels.use(v)
            raw = kernels.quantize_activations(x, kind)
            if kind == 1:  # a row: nb scales, nb scaled sums, nb integer sums, nb x 32 codes
                d, s, q = act_a8(x)
                nb = k // 32
                assert torch.equal(raw[:, :4 * nb].contiguous().view(torch.float32), d), v
                assert torch.equal(raw[:, 4 * nb:8 * nb].contiguous().view(torch.float32), s), v
                assert torch.equal(raw[:, 8 * nb:12 * nb].contiguous().view(torch.int32).float(), q.sum(-1)), v
                assert torch.equal(raw[:, 12 * nb:].contiguous().view(torch.int8).float().view(5, nb, 32), q), v
            else:
                d, q, sums = act_ak(x)
                blk = raw.view(5, -1, 292)
                assert torch.equal(blk[..., 0:4].contiguous().view(torch.float32).squeeze(-1), d), v
                assert torch.equal(blk[..., 4:36].contiguous().view(torch.int16).float(), sums), v
                assert torch.equal(blk[..., 36:].contiguous().view(torch.int8).float(), q), v
    finally:
        kernels.use(before)


@pytest.mark.parametrize("name", ["Q4_K", "Q4_1", "Q8_0"])
def test_a_rows_result_depends_on_neither_threads_nor_batch(name):
    """Rows split among threads give the same result as one thread (each row's sum is one thread's), and a
    row of x alone (the decode path: several weight rows a call) the same as within a batch."""
    gen = torch.Generator().manual_seed(3)
    k = 512 if name == "Q4_K" else 352
    blocks = random_blocks(name, 203, k, gen)
    x = torch.randn(7, k, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.ggml_mm(x, blocks, TYPE_IDS[name])
        torch.set_num_threads(max(2, threads))
        many = kernels.ggml_mm(x, blocks, TYPE_IDS[name])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    assert torch.equal(kernels.ggml_mm(x[2:3].contiguous(), blocks, TYPE_IDS[name]), many[2:3])


@pytest.mark.parametrize("m", [1, 5])
def test_products_sharing_an_input_equal_the_single_ones(m):
    """ggml_mm_many: matrices of several types (both activation kinds) from one x, row counts that are not
    multiples of the chunk; each result equals its own ggml_mm, in every variant."""
    gen = torch.Generator().manual_seed(11 + m)
    names = ("Q4_K", "Q5_0", "Q6_K", "Q8_0", "F16")
    blocks = [random_blocks(name, rows, 512, gen) for name, rows in zip(names, (70, 33, 5, 64, 9), strict=True)]
    x = torch.randn(m, 512, generator=gen)
    before = kernels.variant()
    try:
        for v in kernels.variants():
            kernels.use(v)
            many = kernels.ggml_mm_many(x, blocks, [TYPE_IDS[n] for n in names])
            for y, b, n in zip(many, blocks, names, strict=True):
                assert torch.equal(y, kernels.ggml_mm(x, b, TYPE_IDS[n])), (v, n)
    finally:
        kernels.use(before)


def test_opcheck():
    gen = torch.Generator().manual_seed(4)
    for name in ("Q4_0", "Q6_K", "F16"):
        k = 256
        blocks = random_blocks(name, 16, k, gen)
        torch.library.opcheck(torch.ops.groundup.ggml_mm, (torch.randn(2, k, generator=gen), blocks, TYPE_IDS[name]))
    torch.library.opcheck(torch.ops.groundup.quantize_activations, (torch.randn(2, 256, generator=gen), 2))
    pair = [random_blocks("Q4_0", 16, 256, gen), random_blocks("Q6_K", 8, 256, gen)]
    torch.library.opcheck(torch.ops.groundup.ggml_mm_many,
                          (torch.randn(2, 256, generator=gen), pair, [TYPE_IDS["Q4_0"], TYPE_IDS["Q6_K"]]))


def test_bad_input_names_the_problem():
    blocks = random_blocks("Q4_0", 4, 64, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="not a multiple of the block"):
        kernels.ggml_mm(torch.randn(1, 48), blocks, TYPE_IDS["Q4_0"])
    with pytest.raises(RuntimeError, match="blocks must be contiguous uint8"):
        kernels.ggml_mm(torch.randn(1, 96), blocks, TYPE_IDS["Q4_0"])
    with pytest.raises(RuntimeError, match="not supported"):
        kernels.ggml_mm(torch.randn(1, 64), blocks, 5)
    with pytest.raises(ValueError, match="not available on this CPU"):
        kernels.use("avx9000")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cap", [0.0, 5.0])
def test_decode_attention_equals_softmax_attention(dtype, cap):
    """One query a head against a strided cache view, GQA, hidden keys, a soft-cap; a row with no visible
    key gives zeros."""
    gen = torch.Generator().manual_seed(7)
    B, H, K, S, D, cap_slots = 3, 8, 2, 37, 32, 64
    q = torch.randn(B, 1, H, D, generator=gen).transpose(1, 2)  # [B, H, 1, D], strided as the projection leaves it
    buf_k = torch.randn(B, K, cap_slots, D, generator=gen).to(dtype)
    buf_v = torch.randn(B, K, cap_slots, D, generator=gen).to(dtype)
    k, v = buf_k[:, :, :S], buf_v[:, :, :S]  # a cache's filled slots: a view
    visible = torch.rand(B, S, generator=gen) > 0.3
    visible[2] = False
    scores = (q.reshape(B, K, H // K, D) @ k.float().transpose(-1, -2)) * 0.125  # [B, K, G, S]
    if cap:
        scores = cap * torch.tanh(scores / cap)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    want = (scores.softmax(-1).nan_to_num() @ v.float()).reshape(B, H, 1, D)
    got = kernels.decode_attention(q, k, v, visible, 0.125, cap)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[2], torch.zeros_like(got[2]))
    torch.library.opcheck(torch.ops.groundup.decode_attention, (q, k, v, visible, 0.125, cap))
