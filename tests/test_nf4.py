"""NF4 / FP4 and double quantization (nn/nf4.py) against bitsandbytes, byte by byte."""

from __future__ import annotations

import pytest
import torch

from groundup.nn import nf4

bnb = pytest.importorskip("bitsandbytes")
bf = pytest.importorskip("bitsandbytes.functional")

# a width that is not a multiple of 64 (blocks straddle rows), an odd count (a padded half byte), a vector
SHAPES = [(64, 64), (96, 200), (7, 33), (1000,), (130, 257)]


def test_levels_are_bitsandbytes_and_the_normal_quantiles():
    for kind in ("nf4", "fp4"):
        ours, theirs = nf4.levels(kind), bf.get_4bit_type(kind, device="cpu")
        assert ours.numpy().tobytes() == theirs.numpy().tobytes()  # bitwise: +0 and -0 are different bytes
    # NF4 is the QLoRA construction: 8 positive and 7 negative N(0, 1) quantiles at offset 0.9677, and zero
    dt = torch.float64
    pos = torch.special.ndtri(torch.linspace(0.9677083, 0.5, 9, dtype=dt)[:-1])
    neg = -torch.special.ndtri(torch.linspace(0.9677083, 0.5, 8, dtype=dt)[:-1])
    derived = torch.cat([pos, torch.zeros(1, dtype=dt), neg]).sort().values
    torch.testing.assert_close((derived / derived.max()).float(), nf4.levels("nf4"), atol=3e-7, rtol=0)


def test_dynamic_maps_are_bitsandbytes():
    for signed in (True, False):
        ours, theirs = nf4.dynamic_map(signed), bf.create_dynamic_map(signed=signed)
        assert ours.numpy().tobytes() == theirs.numpy().tobytes()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_quantize_4bit_equals_bitsandbytes(shape, quant_type, dtype):
    torch.manual_seed(sum(shape))
    w = (torch.randn(shape) * 0.05).to(dtype)
    w.view(-1)[::17] = 0  # exact zeros: the tie at fp4's +0 / -0 and nf4's 0
    for blocksize in (64, 128):
        theirs, state = bf.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
        codes, absmax = nf4.quantize_4bit(w, blocksize, quant_type)
        assert torch.equal(codes, theirs)
        q, nested, offset = nf4.compress_absmax(absmax)
        assert torch.equal(q, state.absmax)
        assert torch.equal(nested, state.state2.absmax)
        assert offset.item() == state.offset.item()
        assert torch.equal(nf4.dynamic_map(), state.state2.code)
        # dequantization: the double-quantized absmax, then level x absmax in the weight's dtype
        ours = nf4.dequantize_4bit(codes, nf4.absmax_of(q, nested, offset), shape, nf4.levels(quant_type),
                                   blocksize, dtype)
        assert ours.dtype == dtype
        full_absmax = bf.dequantize_blockwise(state.absmax, state.state2) + state.offset
        assert torch.equal(ours, _bnb_dequantize(theirs, state, full_absmax, shape))
        # without double quantization
        plain, plain_state = bf.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
        assert torch.equal(plain_state.absmax, absmax)
        assert torch.equal(nf4.dequantize_4bit(codes, absmax, shape, nf4.levels(quant_type), blocksize, dtype),
                           _bnb_dequantize(plain, plain_state, plain_state.absmax, shape))


def _bnb_dequantize(packed: torch.Tensor, state, absmax: torch.Tensor, shape) -> torch.Tensor:
    """bitsandbytes' dequantize_4bit, checked against its own format: level[code] x absmax per block, from its
    packed bytes (high nibble first) and its absmax. Where its CPU kernel disagrees with that definition (the
    AVX-512 kernel of bitsandbytes 0.49-0.50 does at blocksize 128, seen on an AVX-512 EPYC; the AVX2 one does
    not), the definition is the reference."""
    theirs = bf.dequantize_4bit(packed, state).reshape(shape)  # theirs makes a vector 2-D
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[: theirs.numel()].long()
    level = bf.get_4bit_type(state.quant_type, device="cpu")[codes]
    block = torch.arange(theirs.numel()) // state.blocksize
    definition = (level * absmax.float()[block]).to(theirs.dtype).reshape(shape)
    return theirs if torch.equal(theirs, definition) else definition


def test_rows_of_a_dequantization_are_the_rows_of_the_whole():
    torch.manual_seed(0)
    for shape in [(96, 200), (7, 33), (128, 64)]:
        w = torch.randn(shape)
        codes, absmax = nf4.quantize_4bit(w)
        code = nf4.levels("nf4")
        whole = nf4.dequantize_4bit(codes, absmax, shape, code)
        for rows in (slice(0, 3), slice(1, 6), slice(5, None), slice(2, 2)):
            assert torch.equal(nf4.dequantize_4bit(codes, absmax, shape, code, rows=rows), whole[rows])


def test_8bit_blockwise_equals_bitsandbytes_on_many_values():
    """Double quantization sees few values per layer; here a million, at three scales, against the 8-bit
    quantizer bitsandbytes runs for it (its CPU rule, see nn/nf4.py)."""
    torch.manual_seed(1)
    code = nf4.dynamic_map()
    for n, scale in [(1_000_000, 1.0), (100_003, 1e-3), (777, 40.0)]:
        x = torch.randn(n) * scale
        x[:256] = 0  # an all-zero block
        theirs, state = bf.quantize_blockwise(x, blocksize=256)
        q, absmax = nf4.quantize_8bit(x, code)
        assert torch.equal(absmax, state.absmax)
        assert torch.equal(q, theirs), f"{(q != theirs).sum()} codes differ"
        assert torch.equal(nf4.dequantize_8bit(q, absmax, code), bf.dequantize_blockwise(theirs, state))
    unsigned = nf4.dynamic_map(signed=False)  # the map of Adam's second moment, on non-negative values
    x = torch.randn(50_000) ** 2
    theirs, state = bf.quantize_blockwise(x, code=unsigned, blocksize=256)
    q, absmax = nf4.quantize_8bit(x, unsigned)
    assert torch.equal(q, theirs) and torch.equal(absmax, state.absmax)


def test_nf4_error_is_small_and_bits_per_weight():
    torch.manual_seed(0)
    w = torch.randn(256, 512) * 0.02
    codes, absmax = nf4.quantize_4bit(w)
    q, nested, offset = nf4.compress_absmax(absmax)
    back = nf4.dequantize_4bit(codes, nf4.absmax_of(q, nested, offset), tuple(w.shape), nf4.levels("nf4"))
    # nearest-level rounding: no value moves by more than half the widest gap between levels x its absmax
    widest = nf4.levels("nf4").diff().max() / 2
    assert ((back - w).abs() <= widest * w.abs().amax() * 1.01).all()
    bits = (codes.numel() * 8 + q.numel() * 8 + nested.numel() * 32 + 32) / w.numel()
    assert abs(bits - 4.127) < 0.01


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="blocksize=48"):
        nf4.quantize_4bit(torch.randn(64), 48)
    with pytest.raises(ValueError, match="quant_type='int3'"):
        nf4.levels("int3")


def test_an_nf4_layer_dequantizes_rows_as_the_whole():
    """A row block decodes only its blocks' absmax (double-quantized across 256-block boundaries, rows that cut
    blocks): the same numbers as the whole matrix's dequantization."""
    from groundup.nn.qlinear import NF4Linear

    torch.manual_seed(4)
    layer = NF4Linear.from_linear(torch.nn.Linear(100, 400))  # 625 blocks: three nested blocks of 256
    whole = layer.dequantize(torch.float32)
    for rows in (slice(0, 7), slice(150, 200), slice(163, 170), slice(390, None)):
        assert torch.equal(layer.dequantize(torch.float32, rows), whole[rows])
    assert torch.equal(layer.block_absmax(), nf4.dequantize_8bit(layer.absmax, layer.nested_absmax,
                                                                 layer.nested_quant_map) + layer.nested_offset)
