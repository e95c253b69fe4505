"""ggml block formats: groundup's decoder equals the gguf package's for every supported type, bit for bit, and
its Q8_0 / Q4_0 encoders equal gguf.quants.quantize byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groundup.kernels.ggml_quants import FORMATS, dequantize, quantize

gguf = pytest.importorskip("gguf")


def _random_blocks(type_id: int, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes for n blocks with every float16 field set to a finite value (as real files have)."""
    name, _, size = FORMATS[type_id]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    halves = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q4_K": [0, 2],
              "Q5_K": [0, 2], "Q6_K": [208], "F16": [0], "BF16": []}.get(name, [])
    for off in halves:
        raw[:, off:off + 2] = rng.normal(0, 0.05, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if name == "F32":
        raw = rng.normal(0, 1, n_blocks).astype(np.float32).view(np.uint8).reshape(n_blocks, 4)
    if name == "BF16":
        raw[:, 1] = rng.integers(0x30, 0x40, n_blocks)  # exponents of ordinary magnitudes
    return raw


@pytest.mark.parametrize("type_id", sorted(FORMATS))
def test_dequantize_equals_gguf_bit_for_bit(type_id):
    name, per, _ = FORMATS[type_id]
    raw = _random_blocks(type_id, 64 if per > 1 else 4096, seed=type_id)
    n = raw.shape[0] * per
    want = gguf.quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType(type_id)).reshape(-1)
    got = dequantize(torch.from_numpy(raw.reshape(-1)), type_id, n).numpy()
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32)), name


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16", "F32"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_quantize_equals_gguf_byte_for_byte(name, scale):
    rng = np.random.default_rng(int(scale * 7))
    x = (rng.normal(0, scale, (64, 96))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (scale 0)
    x[1, :32] = np.arange(32) - 16  # exact halves after scaling: the rounding rule decides
    tid = gguf.GGMLQuantizationType[name]
    want = gguf.quants.quantize(x, tid).reshape(-1)
    got = quantize(torch.from_numpy(x), int(tid)).numpy()
    assert np.array_equal(got, want.view(np.uint8)), name
    back = dequantize(torch.from_numpy(got), int(tid), x.size).numpy().reshape(x.shape)
    if name in ("Q8_0", "Q4_0"):  # half a step (Q4_0: a step, its codes reach +7 d only), plus the f16 scale's
        steps, share = {"Q8_0": (127, 0.51), "Q4_0": (8, 1.01)}[name]  # rounding
        top = np.abs(x.reshape(-1, 32)).max(1, keepdims=True)
        bound = share * top / steps + top * 2**-10 + steps * 2**-24
        assert (np.abs(back - x).reshape(-1, 32) <= bound).all()


def test_bad_sizes_and_types_are_named():
    with pytest.raises(ValueError, match="ggml type 99 is not supported"):
        dequantize(torch.zeros(10, dtype=torch.uint8), 99, 10)
    with pytest.raises(ValueError, match="Q8_0: 33 bytes do not hold 32 values"):
        dequantize(torch.zeros(33, dtype=torch.uint8), 8, 32)
    with pytest.raises(ValueError, match="writing ggml type Q4_K"):
        quantize(torch.zeros(256), 12)
