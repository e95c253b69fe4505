"""groundup's native CPU kernels: products of activations with weights kept in llama.cpp's block formats.

``ggml_mm(x, blocks, type_id)`` multiplies x [M, K] (float32) by a matrix [N, K] stored as GGUF blocks
(Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, or F16 / BF16 / F32 rows): the activations are quantized
once per product to the 8-bit blocks each format pairs with in llama.cpp (32-value blocks with an fp16 scale
for the legacy formats, 256-value super-blocks with sums of 16 for the k-quants), and every block's product is
an exact integer dot product scaled in float. Float formats multiply float32 activations.
``ggml_mm_many`` multiplies x by several matrices at once (q, k and v; gate and up), quantizing x once.
``decode_attention`` is a decode step's attention: one query a head against the cache, in one pass a head.

The library (``csrc/``) is compiled on first use (``build.py``) and holds one variant per instruction set,
chosen at run time by the CPU: ``generic`` (portable C++) and ``avx2`` (AVX2 + FMA + F16C). The environment
variable ``GROUNDUP_KERNELS`` forces one (``off`` for torch's own paths, ``generic``, ``avx2``); unset, the
widest the CPU has runs. Without a compiler or ninja the callers take their torch paths and one warning says
what to install.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

ENV = "GROUNDUP_KERNELS"
_STATE: dict[str, object] = {}
_LOCK = threading.Lock()


def requested() -> str:
    """The variant the environment asks for: "auto" (unset), "off", or a variant name."""
    return os.environ.get(ENV, "").strip().lower() or "auto"


def _register_fakes() -> None:
    """Shapes for tracing (torch.compile, meta tensors): the operators then sit in a compiled graph."""
    @torch.library.register_fake("groundup::ggml_mm")
    def _(x, blocks, type_id):
        return x.new_empty(x.shape[0], blocks.shape[0])

    @torch.library.register_fake("groundup::ggml_mm_many")
    def _(x, blocks, types):
        return [x.new_empty(x.shape[0], b.shape[0]) for b in blocks]

    @torch.library.register_fake("groundup::decode_attention")
    def _(q, k, v, visible, scale, cap):
        return q.new_empty(q.shape)

    @torch.library.register_fake("groundup::quantize_activations")
    def _(x, kind):
        per, size = (32, 44) if kind == 1 else (256, 292)
        return x.new_empty(x.shape[0], x.shape[1] // per * size, dtype=torch.uint8)


def _load() -> bool:
    want = requested()
    if want == "off":
        return False
    from . import build  # the build machinery (cpp_extension) only when the kernels are used

    try:
        build.build()
    except Exception as err:  # no compiler, no ninja, a failed compile: torch's paths run instead
        warnings.warn(f"groundup's native kernels are not available ({str(err).strip().splitlines()[-1][:300]}); "
                      f"running torch's paths instead. Set {ENV}=off to silence this.", RuntimeWarning, stacklevel=3)
        return False
    _register_fakes()
    names = list(torch.ops.groundup.available_variants())
    if want != "auto":
        if want not in names:
            raise ValueError(f"{ENV}={want!r}: this CPU offers {', '.join(names)} (or off)")
        torch.ops.groundup.use_variant(want)
    return True


def available() -> bool:
    """Whether the native operators are loaded (building them on the first call)."""
    if "ok" not in _STATE:
        with _LOCK:
            if "ok" not in _STATE:
                _STATE["ok"] = _load()
    return bool(_STATE["ok"])


def variants() -> list[str]:
    """The variants this CPU can run, narrowest first ([] without the kernels)."""
    return list(torch.ops.groundup.available_variants()) if available() else []


def variant() -> str:
    """The variant the products run ("off" without the kernels)."""
    return str(torch.ops.groundup.use_variant("")) if available() else "off"


def use(name: str) -> str:
    """Run variant ``name`` from now on (tests run each one); returns the previous one."""
    if not available():
        raise RuntimeError("the native kernels are not loaded: " + (f"{ENV}=off" if requested() == "off" else
                                                                    "see the warning above"))
    before = variant()
    if name not in variants():
        raise ValueError(f"kernel variant {name!r} is not available on this CPU: {', '.join(variants())}")
    torch.ops.groundup.use_variant(name)
    return before


def ggml_mm(x: torch.Tensor, blocks: torch.Tensor, type_id: int) -> torch.Tensor:
    """x [M, K] float32 times the matrix [N, K] whose rows are ``blocks`` [N, row bytes] of ggml type
    ``type_id``: [M, N] float32. Needs ``available()``."""
    return torch.ops.groundup.ggml_mm.default(x, blocks, type_id)


def ggml_mm_many(x: torch.Tensor, blocks: list[torch.Tensor], type_ids: list[int]) -> list[torch.Tensor]:
    """x [M, K] float32 times several matrices (``blocks[i]`` of ggml type ``type_ids[i]``, [N_i, K] each): the
    list of [M, N_i] float32 products, x quantized once for all of them and their rows shared among the
    threads in one pass. Needs ``available()``."""
    return torch.ops.groundup.ggml_mm_many.default(x, blocks, type_ids)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float,
                     cap: float = 0.0) -> torch.Tensor:
    """One query a head: q [B, H, 1, D] float32 against k, v [B, K, S, D] (float32 or bfloat16; K divides H),
    keys where ``visible`` [B, S] (bool); scores scaled, soft-capped by ``cap`` (0: none) -> [B, H, 1, D]
    float32. A query that sees no key gets zeros. Needs ``available()``."""
    return torch.ops.groundup.decode_attention.default(q, k, v, visible, scale, cap)


def quantize_activations(x: torch.Tensor, kind: int) -> torch.Tensor:
    """The 8-bit activation blocks of x [M, K] float32, as uint8 [M, bytes]. Kind 1, blocks of 32 values: a
    row holds its K/32 float scales d, its K/32 float sums s (d times the codes' sum), the K/32 int32 sums of
    the codes, then the K/32 x 32 int8 codes (44 bytes a block). Kind 2, super-blocks of 256: float d, 16
    int16 sums, 256 int8 (292 bytes each)."""
    return torch.ops.groundup.quantize_activations(x, kind)


__all__ = ["ENV", "available", "decode_attention", "ggml_mm", "ggml_mm_many", "quantize_activations", "requested",
           "use", "variant", "variants"]
