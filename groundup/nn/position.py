"""Position information: sinusoidal tables, rotary embeddings (RoPE) and ALiBi slopes.

- Sinusoidal: Vaswani et al., 2017, "Attention Is All You Need".
- RoPE: Su et al., 2021, "RoFormer". We use the half-split pairing (dim i pairs with i + rot/2), the
  layout of the Hugging Face Llama/NeoX/Falcon checkpoints. Context extension: linear position
  interpolation (Chen et al., 2023) divides positions by the factor; NTK-aware scaling (bloc97, 2023)
  raises the base to theta * factor^(rot / (rot - 2)) so low frequencies stretch and high ones stay; its
  dynamic form (emozilla, 2023) picks the base from the current length, so short inputs keep plain RoPE.
- ALiBi: Press et al., 2022, "Train Short, Test Long": a per-head linear penalty on distance.
- Relative buckets: Raffel et al., 2020 (T5), after Shaw et al., 2018: a learned per-head scalar for each
  bucket of the key-query offset; exact buckets for short offsets, logarithmic ones up to a max distance.
"""

from __future__ import annotations

import math

import torch

from ..config import Config


def sinusoidal_table(n_pos: int, dim: int, *, layout: str = "interleaved",
                     device: torch.device | None = None) -> torch.Tensor:
    """[n_pos, dim] table with wavelengths 2π .. 10000·2π.

    ``interleaved`` (the paper): sin on even dims, cos on odd dims. ``split`` (Marian checkpoints): the
    same sines in the first half and the cosines in the second.
    """
    return sinusoidal_at(torch.arange(n_pos, device=device), dim, layout=layout)


def sinusoidal_at(positions: torch.Tensor, dim: int, *, layout: str = "interleaved") -> torch.Tensor:
    """The sinusoidal encodings of integer ``positions`` (any shape [...]) -> [..., dim], computed for those
    positions only: no table sized by the largest position, so no read of the positions' values."""
    pos = positions.to(torch.float32)[..., None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                    * (-math.log(10000.0) / dim))
    angles = pos * inv  # [..., dim / 2]
    if layout == "split":
        return torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1)
    return torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)  # sin, cos interleaved


def rope_inv_freq(cfg: Config, *, scaling: str | None = None, factor: float | None = None,
                  theta: float | None = None, seq_len: int | None = None,
                  device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies [rot/2] for the rotary dims, with NTK-aware base scaling applied if asked.
    ``scaling``, ``factor`` and ``theta`` override the config's (local layers use their own base);
    ``seq_len`` is the current length dynamic NTK scales for (None: max_seq_len, i.e. unscaled)."""
    rot = cfg.rotary_dim
    scaling = cfg.rope.scaling if scaling is None else scaling
    factor = cfg.rope.factor if factor is None else factor
    theta = cfg.rope.theta if theta is None else theta
    if scaling == "ntk":
        theta = theta * factor ** (rot / (rot - 2))
    if scaling == "dynamic":
        length = max(seq_len or 0, cfg.max_seq_len)
        theta = theta * (factor * length / cfg.max_seq_len - (factor - 1)) ** (rot / (rot - 2))
    exponents = torch.arange(0, rot, 2, dtype=torch.float32, device=device) / rot
    inv = 1.0 / theta**exponents
    if scaling == "longrope":  # the long divisors once the length passes the original context
        long = seq_len is not None and seq_len > cfg.rope.original_max_seq_len
        divisors = cfg.rope.long_factor if long else cfg.rope.short_factor
        return inv / torch.tensor(divisors, dtype=torch.float32, device=device)
    if scaling == "yarn":
        return _yarn(cfg, inv, factor, rot, theta)
    return _llama3(cfg, inv, factor) if scaling == "llama3" else inv


def yarn_attention_factor(cfg: Config, factor: float) -> float:
    """YaRN's scale on cos and sin (its "attention temperature"): the config's, or 0.1 ln(factor) + 1; for
    longrope sqrt(1 + ln(factor) / ln(original context))."""
    if cfg.rope.attention_factor is not None:
        return cfg.rope.attention_factor
    if factor <= 1:
        return 1.0
    if cfg.rope.scaling == "longrope":
        return math.sqrt(1 + math.log(factor) / math.log(cfg.rope.original_max_seq_len))
    return 0.1 * math.log(factor) + 1.0


def _yarn(cfg: Config, inv: torch.Tensor, factor: float, rot: int, theta: float) -> torch.Tensor:
    """YaRN (Peng et al., 2023): per dimension pair, keep the frequency where it turns more than beta_fast times
    over the original context, interpolate it by the factor where fewer than beta_slow, ramp linearly
    between (bounds floored/ceiled to whole dims, as the reference does)."""
    original = cfg.rope.original_max_seq_len

    def dim_of(turns: float) -> float:  # the dimension whose wavelength fits `turns` times in the original context
        return rot * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(dim_of(cfg.rope.beta_fast)), 0), min(math.ceil(dim_of(cfg.rope.beta_slow)), rot - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    ramp = ((torch.arange(rot // 2, dtype=torch.float32, device=inv.device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate
    return inv / factor * (1 - keep) + inv * keep


def _llama3(cfg: Config, inv: torch.Tensor, factor: float) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling (Meta, 2024): long wavelengths (beyond the pre-training
    context / low_freq_factor) are interpolated by the factor, short ones (below context / high_freq_factor)
    kept, and the band between blends the two linearly in context / wavelength."""
    original, low, high = cfg.rope.original_max_seq_len, cfg.rope.low_freq_factor, cfg.rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > original / low, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(cfg: Config, positions: torch.Tensor, dtype: torch.dtype, *, scaling: str | None = None,
                 factor: float | None = None, theta: float | None = None, seq_len: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for integer positions [..., T] -> two tensors [..., T, rot] in ``dtype``.

    Angles are computed in fp32 (bf16 positions would round above 256) and cast once at the end.
    ``seq_len``: the length the positions belong to (cached + new), which dynamic NTK scales for; callers
    pass it from shapes, so no position is read back from the device.
    """
    scaling = cfg.rope.scaling if scaling is None else scaling
    factor = cfg.rope.factor if factor is None else factor
    inv = rope_inv_freq(cfg, scaling=scaling, factor=factor, theta=theta, seq_len=seq_len, device=positions.device)
    pos = positions.to(torch.float32)
    if scaling == "linear":
        pos = pos / factor
    angles = pos[..., None] * inv  # [..., T, rot/2]
    angles = torch.cat((angles, angles), dim=-1)  # [..., T, rot]: the half-split layout
    if scaling in ("yarn", "longrope"):
        scale = yarn_attention_factor(cfg, factor)
        return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rot`` dims of x [B, H, T, D] by the angles in cos/sin [T, rot] or [B, 1, T, rot]."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # (x1, x2) -> (-x2, x1): multiplying by i in each complex pair (x1[j], x2[j]).
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def alibi_slopes(n_heads: int, max_bias: float = 8.0, *, device: torch.device | None = None) -> torch.Tensor:
    """Per-head ALiBi slopes [H]: 2^(-max_bias·h/n) for h = 1..n when n is a power of two.

    Otherwise (the paper's recipe) take the slopes of the nearest lower power of two, then fill the
    remaining heads with every other slope of the next power of two.
    """
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-max_bias * h / n) for h in range(1, n + 1)]

    lower = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(lower)
    if lower != n_heads:
        slopes += geometric(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


def relative_bucket(offset: torch.Tensor, *, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bucket ids in [0, n_buckets) for integer offsets ``key position - query position``.

    Bidirectional (encoder): half the buckets for keys before the query, half for keys after. Causal
    (decoder): all buckets for the past; future offsets fall in bucket 0 and are masked anyway. Within a
    half, distances below n/2 get a bucket each; larger ones share buckets spaced logarithmically up to
    ``max_distance``, beyond which everything lands in the last bucket.
    """
    if bidirectional:
        n_buckets //= 2
        base = (offset > 0).long() * n_buckets  # keys after the query use the upper half
        dist = offset.abs()
    else:
        base = torch.zeros_like(offset)
        dist = (-offset).clamp(min=0)
    exact = n_buckets // 2
    # clamp(min=1) only keeps log() finite for the short distances, which take the exact branch
    log_ratio = torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (n_buckets - exact)).long()).clamp(max=n_buckets - 1)
    return base + torch.where(dist < exact, dist, far)
