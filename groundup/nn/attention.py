"""Multi-head attention: self or cross, MHA/GQA/MQA, causal/bidirectional/sliding masks, RoPE, ALiBi, T5 buckets.

Shape notation used across groundup (declared once, here):
    B batch, T query length, S key length, C d_model, H query heads, K kv heads, G = H/K query heads
    per kv head, D head dim, V vocab, E experts.

Three interchangeable kernels compute softmax(Q K^T / sqrt(D) + bias) V:
    eager  explicit scores and probabilities (can return the weights for plotting);
    sdpa   torch.nn.functional.scaled_dot_product_attention;
    flash  the FlashAttention algorithm (Dao et al., 2022) in PyTorch: keys are visited in tiles and
           the softmax is computed online (running max and normaliser, Milakov & Gimelshein, 2018), so
           the T x S score matrix is never materialised; tiles that the mask hides entirely are skipped.
Gemma 2's soft-capping (Gemma team, 2024) bounds the scaled scores as cap * tanh(scores / cap) before the
mask is added; each kernel applies it where it forms scores (sdpa has no hook for it, so a capped sdpa call
runs the eager computation).
GQA (Ainslie et al., 2023) and MQA (Shazeer, 2019) share each kv head among G query heads; eager and flash
express that by viewing queries as [B, K, G, T, D] against keys [B, K, 1, S, D], so no kv copy is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..config import Config
from .gguf_linear import project
from .kv_cache import KVCache
from .linear import Linear
from .norm import RMSNorm
from .position import apply_rope, relative_bucket


@dataclass
class MaskSpec:
    """What each query may see, described without materialising a T x S matrix.

    Queries sit at absolute positions q_offset .. q_offset + T - 1 and keys at 0 .. S - 1 (so a decode
    step with a cache has q_offset = S - T). ``key_padding`` [B, S] is True on real tokens.
    """

    causal: bool
    window: int | None = None
    q_offset: int = 0
    key_padding: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None  # [H]
    # T5 relative position bias: a learned table [n_buckets, H] looked up by relative_bucket(offset)
    rel_table: torch.Tensor | None = None
    rel_bidirectional: bool = True
    rel_max_distance: int = 128
    # an explicit visibility [B, 1, T, S] (True = may attend) for masks no rule above describes: Flamingo's
    # interleaved images, where each text token sees the image tokens of its latest preceding image only
    allowed: torch.Tensor | None = None
    # The dense bias of eager/sdpa is the same for every layer of a forward pass: build it once.
    _dense: dict = field(default_factory=dict, repr=False, compare=False)

    def dense_bias(self, T: int, S: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """bias(0, T, 0, S), memoised; the flash kernel's tiles are never cached (that would rebuild T x S)."""
        key = (T, S, dtype, device)
        if key not in self._dense:
            self._dense[key] = self.bias(0, T, 0, S, dtype, device)
        return self._dense[key]

    @property
    def trivial(self) -> bool:
        """True when the mask is plain causal (or nothing) with aligned queries: sdpa's fast path."""
        return self.window is None and self.key_padding is None and self.alibi_slopes is None \
            and self.rel_table is None and self.q_offset == 0 and self.allowed is None

    def bias(self, q0: int, q1: int, k0: int, k1: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor | None:
        """Additive bias for queries [q0, q1) and keys [k0, k1): [B|1, H|1, q1-q0, k1-k0] or None.

        Hidden positions get the dtype's most negative finite value rather than -inf, so a query with no
        visible key (a padding query under a causal mask) gets a finite output instead of NaN; that output
        carries no meaning and may differ between kernels.
        """
        qp = torch.arange(q0 + self.q_offset, q1 + self.q_offset, device=device)[:, None]  # [tq, 1]
        kp = torch.arange(k0, k1, device=device)[None, :]  # [1, tk]
        allowed = None
        if self.causal:
            allowed = kp <= qp
            if self.window is not None:
                allowed = allowed & (qp - kp < self.window)
        if self.key_padding is not None:
            pad = self.key_padding[:, None, None, k0:k1].bool()  # [B, 1, 1, tk]
            allowed = pad if allowed is None else pad & allowed
        if self.allowed is not None:
            seen = self.allowed[..., q0:q1, k0:k1].bool()  # [B, 1, tq, tk]
            allowed = seen if allowed is None else seen & allowed
        if self.alibi_slopes is not None:
            # -slope * distance; bidirectional models penalise both directions.
            dist = (qp - kp).abs().to(torch.float32)
            bias = (-self.alibi_slopes.to(device)[:, None, None] * dist).to(dtype)  # [H, tq, tk]
        elif self.rel_table is not None:
            buckets = relative_bucket(kp - qp, bidirectional=self.rel_bidirectional,
                                      n_buckets=self.rel_table.shape[0], max_distance=self.rel_max_distance)
            bias = self.rel_table[buckets].permute(2, 0, 1).to(dtype)  # [tq, tk, H] -> [H, tq, tk]
        elif allowed is None:
            return None
        else:
            bias = torch.zeros((), dtype=dtype, device=device)
        if allowed is None:
            return bias[None]
        if allowed.dim() == 2:
            allowed = allowed[None, None]  # [1, 1, tq, tk]
        shape = torch.broadcast_shapes(bias.shape, allowed.shape)
        return bias.expand(shape).masked_fill(~allowed, torch.finfo(dtype).min)

    def one_query_visibility(self, B: int, S: int, device: torch.device) -> torch.Tensor | None:
        """For a single query (a decode step): which of the S keys it sees, bool [B, S]; None when a part of
        the mask (ALiBi, T5 buckets, an explicit visibility) is not a plain visibility."""
        if self.alibi_slopes is not None or self.rel_table is not None or self.allowed is not None:
            return None
        kp = torch.arange(S, device=device)
        seen = torch.ones(S, dtype=torch.bool, device=device)
        if self.causal:
            seen = kp <= self.q_offset
            if self.window is not None:
                seen = seen & (self.q_offset - kp < self.window)
        if self.key_padding is not None:
            return self.key_padding[:, :S].bool() & seen  # [B, S]
        return seen.expand(B, S).contiguous()

    def hides_tile(self, q0: int, q1: int, k0: int, k1: int) -> bool:
        """True when causality or the window hides every key of the tile from every query of it."""
        if not self.causal:
            return False
        first_q, last_q = q0 + self.q_offset, q1 - 1 + self.q_offset
        if k0 > last_q:  # all keys lie in the future of all queries
            return True
        return self.window is not None and first_q - (k1 - 1) >= self.window


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): x unchanged near 0, bounded by +-cap (None: x as is)."""
    return x if cap is None else torch.tanh(x / cap) * cap


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, *, scale: float,
                    dropout: float = 0.0, return_weights: bool = False, cap: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(softcap(q k^T * scale) + bias) v with explicit probabilities. q [B,H,T,D], k/v [B,K,S,D]."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    qg = q.view(B, K, H // K, T, D)  # [B, K, G, T, D]
    scores = softcap((qg @ k[:, :, None].transpose(-1, -2)).view(B, H, T, S) * scale, cap)  # [B, H, T, S]
    bias = mask.dense_bias(T, S, scores.dtype, q.device)
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    weights = probs if return_weights else None
    if dropout:
        probs = F.dropout(probs, dropout)
    out = probs.view(B, K, H // K, T, S) @ v[:, :, None]  # [B, K, G, T, D]
    return out.view(B, H, T, D), weights


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, *, scale: float,
                   dropout: float = 0.0) -> torch.Tensor:
    """torch's fused scaled_dot_product_attention; plain causal masks take its is_causal fast path."""
    T, S = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if q.requires_grad and q.stride(-1) != 1:
        # Head dims not contiguous (the transposed CPU projections of nn/linear.py) send torch's CPU SDPA
        # to its slow math path, whose backward costs far more than these three copies.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if mask.trivial and (not mask.causal or T == S):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=mask.causal and T > 1,
                                              scale=scale, enable_gqa=gqa)
    bias = mask.dense_bias(T, S, q.dtype, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale,
                                          enable_gqa=gqa)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, *, scale: float,
                    dropout: float = 0.0, block: int = 64, cap: float | None = None) -> torch.Tensor:
    """Tiled attention with an online softmax; never builds more than a block x block score tile."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    work = torch.float32  # accumulate in fp32 whatever the input dtype, as the CUDA kernels do
    qg = q.view(B, K, G, T, D).to(work) * scale  # [B, K, G, T, D]
    kt = k.to(work).transpose(-1, -2)[:, :, None]  # [B, K, 1, D, S]
    vw = v.to(work)[:, :, None]  # [B, K, 1, S, D]
    out = torch.empty(B, K, G, T, D, dtype=work, device=q.device)
    for q0 in range(0, T, block):
        q1 = min(q0 + block, T)
        qb = qg[:, :, :, q0:q1]  # [B, K, G, tq, D]
        m = torch.full((B, K, G, q1 - q0, 1), -math.inf, dtype=work, device=q.device)  # running max
        denom = torch.zeros_like(m)  # running softmax normaliser
        acc = torch.zeros(B, K, G, q1 - q0, D, dtype=work, device=q.device)
        for k0 in range(0, S, block):
            k1 = min(k0 + block, S)
            if mask.hides_tile(q0, q1, k0, k1):
                continue
            s = softcap(qb @ kt[..., k0:k1], cap)  # [B, K, G, tq, tk]
            bias = mask.bias(q0, q1, k0, k1, work, q.device)
            if bias is not None:
                s = s + _group_heads(bias, K, G)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            correction = torch.exp(m - m_new)  # rescales what was accumulated under the old max
            denom = denom * correction + p.sum(dim=-1, keepdim=True)
            if dropout:
                p = F.dropout(p, dropout)
            acc = acc * correction + p @ vw[:, :, :, k0:k1]
            m = m_new
        out[:, :, :, q0:q1] = acc / denom
    return out.view(B, H, T, D).to(q.dtype)


def _group_heads(bias: torch.Tensor, K: int, G: int) -> torch.Tensor:
    # [B|1, H|1, tq, tk] -> [B|1, K|1, G|1, tq, tk] to broadcast against grouped scores.
    b, h, tq, tk = bias.shape
    if h == 1:
        return bias[:, :, None]
    return bias.view(b, K, G, tq, tk)


class Attention(nn.Module):
    """Self- or cross-attention with separate q/k/v/o projections (names equal the state-dict keys)."""

    def __init__(self, cfg: Config, kv_dim: int | None = None) -> None:
        """``kv_dim``: the width keys and values are projected from, when a cross-attention's memory is not
        d_model wide (BLIP-2's Q-Former reads the image tower's features)."""
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # T5 leaves scores unscaled: its initialisation absorbs the 1/sqrt(D) (Raffel et al., 2020); Gemma 2
        # scales by a dimension of its own (query_pre_attn_scalar), which differs from head_dim in the 27B
        self.scale = 1.0 / math.sqrt(cfg.attn_scale_dim or cfg.head_dim) if cfg.attn_scale == "inv_sqrt_d" else 1.0
        self.cap = cfg.attn_softcap
        self.kernel = cfg.impl.attn_kernel
        self.flash_block_size = cfg.impl.flash_block_size
        self.dropout = cfg.attn_dropout
        q_dim, kv_width, kv_in = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, kv_dim or cfg.d_model
        self.q_proj = Linear(cfg.d_model, q_dim, bias=cfg.attn_bias)
        self.k_proj = Linear(kv_in, kv_width, bias=cfg.attn_bias and cfg.key_bias)
        self.v_proj = Linear(kv_in, kv_width, bias=cfg.attn_bias)
        self.o_proj = Linear(q_dim, cfg.d_model, bias=cfg.attn_out_bias)
        # Query-key normalisation (Dehghani et al., 2023; Qwen3): bounds the attention logits
        self.qk_norm = cfg.qk_norm
        q_width, k_width = (cfg.head_dim, cfg.head_dim) if cfg.qk_norm == "head" else (q_dim, kv_width)
        on = cfg.qk_norm != "none"
        self.q_norm = RMSNorm(q_width, cfg.norm_eps, cfg.norm_weight_offset) if on else None
        self.k_norm = RMSNorm(k_width, cfg.norm_eps, cfg.norm_weight_offset) if on else None

    def forward(self, x: torch.Tensor, mask: MaskSpec, *, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                memory: torch.Tensor | None = None, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, C] -> ([B, T, C], attention weights [B, H, T, S] if asked, eager kernel only).

        Self-attention takes keys and values from x; cross-attention from ``memory`` [B, S, C] (the
        encoder output). With a ``cache``, self-attention appends this step's keys/values to it, and
        cross-attention projects the memory once and reuses it on later steps.
        """
        B, T, _ = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if memory is None:  # self-attention: q, k and v from x, one product where the layers allow (project)
            q, k, v = project(x, (self.q_proj, self.k_proj, self.v_proj))  # [B, T, H*D], [B, T, K*D] x2
        else:
            q, k, v = self.q_proj(x), None, None
        if self.qk_norm == "full":
            q = self.q_norm(q)
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        if self.qk_norm == "head":
            q = self.q_norm(q)
        if memory is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # cross-attention on a later step: the memory does not change
        else:
            src = x if memory is None else memory
            S = src.shape[1]
            if k is None:
                k, v = self.k_proj(src), self.v_proj(src)  # [B, S, K*D] each
            if self.qk_norm == "full":
                k = self.k_norm(k)
            k = k.view(B, S, K, D).transpose(1, 2)  # [B, K, S, D]
            v = v.view(B, S, K, D).transpose(1, 2)  # [B, K, S, D]
            if self.qk_norm == "head":
                k = self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.append(k, v)
        out, weights = self.attend(q, k, v, mask, return_weights=return_weights)
        out = out.transpose(1, 2).reshape(B, T, H * D)  # [B, T, H*D]
        return self.o_proj(out), weights

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, *,
               return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the configured kernel on projected heads; weights only come from the eager kernel."""
        p = self.dropout if self.training else 0.0
        if q.shape[2] == 1 and not return_weights and p == 0.0 and q.device.type == "cpu" and kernels.available() \
                and not (q.requires_grad and torch.is_grad_enabled()):
            seen = mask.one_query_visibility(q.shape[0], k.shape[2], q.device)
            if seen is not None:  # the decode step: one pass a head (groundup.kernels)
                return kernels.decode_attention(q.float(), k, v, seen, self.scale, self.cap or 0.0).to(q.dtype), None
        if return_weights or self.kernel == "eager" or (self.kernel == "sdpa" and self.cap is not None):
            return eager_attention(q, k, v, mask, scale=self.scale, dropout=p, return_weights=return_weights,
                                   cap=self.cap)
        if self.kernel == "flash":
            return flash_attention(q, k, v, mask, scale=self.scale, dropout=p, block=self.flash_block_size,
                                   cap=self.cap), None
        return sdpa_attention(q, k, v, mask, scale=self.scale, dropout=p), None
