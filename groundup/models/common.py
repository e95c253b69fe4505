"""What every model family does before its blocks: check the ids, embed them, add or prepare positions,
and describe the attention mask. CausalLM, Encoder and Seq2Seq (both stacks) share these functions."""

from __future__ import annotations

import contextlib
import contextvars
import math
import struct
from collections.abc import Iterator

import torch
from torch import nn

from ..config import Config
from ..nn.attention import MaskSpec, softcap
from ..nn.position import alibi_slopes, rope_cos_sin, sinusoidal_at

Rope = tuple[torch.Tensor, torch.Tensor]
Ropes = Rope | dict[str, Rope]  # one cos/sin pair, or one per layer type ({"global": .., "local": ..}, Gemma 3)
_TRUSTED = contextvars.ContextVar("groundup_trusted_inputs", default=False)


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Within: forward passes skip the checks that read tensor values (the id range, whether a mask has any
    padding), which cost a host sync per call on a GPU and stop torch.compile. The decode and training
    loops enter it after checking their inputs once; shapes and dtypes are still checked."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def is_trusted() -> bool:
    """Whether value checks are off: inside trusted_inputs, or while torch.compile traces (a value read
    would break the graph; the compiled decode step's loop checked its inputs once)."""
    return torch.compiler.is_compiling() or _TRUSTED.get()


def has_padding(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The key-padding mask to apply (bool [B, S]), or None when there is none. Outside trusted_inputs an
    all-ones mask is dropped (a kernel without a mask is faster); within, a given mask is taken as is."""
    if mask is None or (not is_trusted() and bool(mask.all())):
        return None
    return mask.bool()


def check_ids(cfg: Config, ids: torch.Tensor, attention_mask: torch.Tensor | None, *, name: str = "input_ids",
              mask_name: str = "attention_mask", n_positions: int | None = None, offset: int = 0,
              extra_ids: int = 0) -> None:
    """Shape, dtype and range checks that fail with the argument named, before any compute.

    ``n_positions`` is the highest position the input reaches (default: its length), checked against a
    learned position table; ``offset`` is the number of positions before the input (a KV cache's).
    ``extra_ids`` ids after the vocabulary are valid too (a soft prompt's virtual tokens).
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a tensor of shape [batch, seq_len], got {shape}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
    if ids.numel() and not is_trusted():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size + extra_ids:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contain token id {bad}, outside the vocabulary [0, {cfg.vocab_size + extra_ids})")
    T = n_positions or offset + ids.shape[1]
    if cfg.pos == "learned" and T > cfg.max_seq_len:
        raise ValueError(
            f"sequence length {T} exceeds max_seq_len={cfg.max_seq_len} ({name}): learned position embeddings "
            "have no row past it; truncate the input or use a model with rope/alibi/relative positions"
        )
    if attention_mask is not None and attention_mask.shape != ids.shape:
        raise ValueError(f"{mask_name} shape {tuple(attention_mask.shape)} must equal {name} shape "
                         f"{tuple(ids.shape)}")


def embed(cfg: Config, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings [B, T, C], scaled by sqrt(d_model) when the config asks (Vaswani et al. 3.4); the
    factor rounded to the embeddings' dtype first with ``embed_scale_rounded``, as the Gemma checkpoints were
    run."""
    x = table(ids)
    if cfg.embed_scale != "sqrt_d":
        return x
    scale = math.sqrt(cfg.d_model)
    if cfg.embed_scale_rounded:
        scale = rounded_to(scale, x.dtype)  # a float that the dtype holds exactly
    return x * scale


def rounded_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to the nearest ``dtype`` number (ties to even), in plain Python: no tensor, so a
    compiled graph holds it as a constant instead of breaking at ``.item()``."""
    if dtype == torch.float64:
        return value
    bits = struct.unpack("<I", struct.pack("<f", value))[0]  # float32 first (rounds to nearest even)
    if dtype == torch.bfloat16:  # the top 16 bits, rounded to nearest even
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    elif dtype == torch.float16:
        return struct.unpack("<e", struct.pack("<e", value))[0]
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def add_positions(cfg: Config, x: torch.Tensor, position_ids: torch.Tensor,
                  pos_embed: nn.Embedding | None, seq_len: int | None = None) -> tuple[torch.Tensor, Ropes | None]:
    """Add absolute positions (learned, sinusoidal) to x [B, T, C], or return RoPE's cos/sin for attention:
    a pair by layer type when local layers have their own base (``rope_local_theta``). ``seq_len`` (cached +
    new positions) sets dynamic NTK's base.

    ALiBi and relative buckets act on the scores instead and are described by ``mask_spec``.
    """
    if cfg.pos == "learned":
        return x + pos_embed(position_ids + cfg.pos_offset), None
    if cfg.pos == "sinusoidal":
        return x + sinusoidal_at(position_ids, cfg.d_model, layout=cfg.sinusoidal_layout).to(x.dtype), None
    if cfg.pos == "rope":
        rope = _rope_pair(rope_cos_sin(cfg, position_ids, x.dtype, seq_len=seq_len))
        if cfg.rope_local_theta is None:
            return x, rope
        local = rope_cos_sin(cfg, position_ids, x.dtype, scaling="none", factor=1.0, theta=cfg.rope_local_theta)
        return x, {"global": rope, "local": _rope_pair(local)}
    return x, None


def _rope_pair(cos_sin: Rope) -> Rope:
    cos, sin = cos_sin  # [T, rot] or [B, T, rot]
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, rot]: broadcast over heads
    return cos, sin


def mask_spec(cfg: Config, *, causal: bool, attention_mask: torch.Tensor | None, device: torch.device,
              q_offset: int = 0, rel_table: torch.Tensor | None = None, window: int | None = None) -> MaskSpec:
    """The MaskSpec of one stack (or of its layers of one window): causality, window, key padding, ALiBi
    slopes or T5 relative bias."""
    padding = has_padding(attention_mask)
    slopes = alibi_slopes(cfg.n_heads, cfg.score_bias.alibi_max_bias, device=device) if cfg.pos == "alibi" else None
    return MaskSpec(causal=causal, window=window if causal else None, q_offset=q_offset,
                    key_padding=padding, alibi_slopes=slopes, rel_table=rel_table, rel_bidirectional=not causal,
                    rel_max_distance=cfg.score_bias.rel_max_distance)


def head_input(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    """The final hidden states [..., C] as the LM head reads them: x d_model^-0.5 before a tied head with
    lm_head_scale='inv_sqrt_d' (T5 v1.0), else x."""
    return x * cfg.d_model**-0.5 if cfg.lm_head_scale == "inv_sqrt_d" else x


def lm_logits(cfg: Config, lm_head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hidden states [..., C] -> logits [..., V]: the head's input scale, lm_head, the tanh soft-cap (Gemma 2)."""
    return softcap(lm_head(head_input(cfg, x)), cfg.logit_softcap)


def dropout(cfg: Config, x: torch.Tensor, training: bool) -> torch.Tensor:
    return nn.functional.dropout(x, cfg.dropout) if cfg.dropout and training else x


def init_weights(module: nn.Module, std: float) -> None:
    """GPT-2 style: N(0, std) for matrices and embeddings, zeros for biases; norms keep ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)


def unique_params(module: nn.Module) -> int:
    """Parameter count with tied tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


class TiedHead:
    """tie_weights / tied_keys for models whose ``lm_head`` may share the token embedding ``embed``."""

    config: Config
    embed: nn.Embedding
    lm_head: nn.Linear

    def tie_weights(self) -> None:
        """Point the output projection at the token embedding again (after loading or moving)."""
        if self.config.tie_embeddings:
            if hasattr(self.embed, "blocks"):  # kept in a GGUF block format: the head reads the same blocks
                self.lm_head.blocks = self.embed.blocks
            else:
                self.lm_head.weight = self.embed.weight

    def tied_keys(self) -> dict[str, str]:
        """State-dict keys that alias another key when embeddings are tied: {alias: source}."""
        if not self.config.tie_embeddings:
            return {}
        leaf = "blocks" if hasattr(self.embed, "blocks") else "weight"
        return {f"lm_head.{leaf}": f"embed.{leaf}"}
