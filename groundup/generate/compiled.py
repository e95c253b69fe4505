"""torch.compile of the one-token decode step: ``generate(..., compile=True)`` / ``--compile``.

A decode step of a small model is hundreds of small operations (norms, RoPE, residual adds, the attention
of one query), each paying Python and dispatch overhead; torch.compile (Ansel et al., 2024) traces the step
into one graph and inductor fuses the elementwise work into a few generated kernels. Tracing needs a step
whose shapes and Python numbers never change, so after the (eager) prefill the cache is seen through
nn.kv_cache.FixedKVCache: the buffers at full capacity, a write slot and position ids as tensors advanced
in place, and an attention mask [B, slots] over the real slots. One compiled graph then serves every step,
and every later call with the same batch size and capacity bucket (capacities round up to 64 slots).

The first call for a new shape compiles (tens of seconds to minutes on a small CPU: inductor writes and
builds C++); `compile_seconds(model)` reports the time spent so far, which the CLI prints.
"""

from __future__ import annotations

import time
import types
import weakref
from collections.abc import Callable

import torch

from ..nn.kv_cache import DecoderCache
from ..nn.qlinear import Int4Linear
from .masks import GrowingMask

BUCKET = 64  # capacities round up to a multiple of this, so nearby lengths share one compiled graph
_STEPS: dict[str, Callable] = {}  # backend -> the compiled step
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(backend, B, slots, dtype)}
_SECONDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> compile seconds so far


def backend_of(compile: bool | str) -> str | None:
    """The torch.compile backend ``compile`` asks for: None (off), "inductor" for True, or the named one."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile in torch._dynamo.list_backends(exclude_tags=()):
        return compile
    raise ValueError(f"compile={compile!r}: give True (inductor) or a torch.compile backend name "
                     f"({', '.join(torch._dynamo.list_backends())})")


def check_compilable(model: torch.nn.Module, prompt_len: int, max_new_tokens: int, draft: bool) -> int:
    """Refuse what the fixed-shape step cannot run, before any work; returns the cache capacity to allocate."""
    cfg = model.config
    if draft:
        raise ValueError("compile=True is not supported with a draft model (speculative decoding verifies "
                         "several tokens per step): drop one of the two")
    if model.prefix_length:
        raise ValueError("compile=True is not supported with prefix tuning (its keys sit in the cache)")
    if cfg.rope.scaling == "longrope":
        raise ValueError("compile=True is not supported with longrope (it reruns the sequence at the switch)")
    need = prompt_len + max_new_tokens
    if need > cfg.context_length:
        raise ValueError(f"compile=True needs the prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) "
                         f"within the model's context ({cfg.context_length}): the fixed cache cannot grow")
    capacity = min(-(-need // BUCKET) * BUCKET, int(min(cfg.context_length, 2**31)))
    windows = [w for w in cfg.layer_windows if w is not None and w < capacity]
    if windows:
        raise ValueError(f"compile=True is not supported with a sliding window ({windows[0]}) shorter than "
                         f"the generation ({capacity} positions): its cache is a ring")
    return capacity


def _step(model: torch.nn.Module, tok: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor,
          cache: DecoderCache) -> torch.Tensor:
    return model(tok, attention_mask=keys, position_ids=pos, cache=cache, logits_to_keep=1)[:, -1].float()


def _step_fn(backend: str) -> Callable:
    """One compiled step per backend, the model an argument: dynamo's guards decide whether a traced graph
    serves another model (same structure and shapes: it does), and no cache here keeps a model alive."""
    if backend not in _STEPS:
        # inductor checks every input's and result's size and stride in Python on each call (~580 checks a step
        # for a 30-layer model, about half a millisecond); the fixed step's shapes are fixed by construction
        options = dict(size_asserts=False, alignment_asserts=False) if backend == "inductor" else None
        _STEPS[backend] = torch.compile(_step, backend=backend, dynamic=False, options=options)
    return _STEPS[backend]


def _entry_code(args: dict) -> Callable | None:
    """The compiled step's code for these arguments, as a plain function: the code of the dynamo cache entry
    whose guards pass for them (checked once here), so later calls with the same model, buffers and shapes
    run it without dynamo's per-call cache lookup (~1 ms a step on a 30-layer model, even with the
    guards skipped). None where this torch offers no such entry."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        for entry in _debug_get_cache_entry_list(_step.__code__):
            if entry.guard_manager.check(args):
                return types.FunctionType(entry.code, _step.__globals__, "_step_compiled")
    except (ImportError, AttributeError, TypeError, RuntimeError):
        pass
    return None


def compile_seconds(model: torch.nn.Module) -> float:
    """Seconds spent in first calls of compiled decode steps of ``model`` (where compilation happens; near 0
    when a graph traced for another model of the same structure serves this one)."""
    return _SECONDS.get(model, 0.0)


class FixedStep:
    """The decode loop's model call after the prefill, through the compiled fixed-shape step.

    ``cache`` is the static cache the prefill filled (T prompt positions); ``padding`` the prompts' growing
    mask when any row is left-padded (positions count real tokens), else None."""

    def __init__(self, model: torch.nn.Module, cache: DecoderCache, padding: GrowingMask | None, T: int,
                 backend: str) -> None:
        kv = cache.layers[0].self_kv
        B, slots = kv.k_buf.shape[0], kv.k_buf.shape[2]
        self.model = model
        self.slot = torch.tensor([T], device=kv.k_buf.device)  # where the next token's keys go
        self.cache = cache.fixed(self.slot)
        self.keys = torch.zeros(B, slots, dtype=torch.long, device=kv.k_buf.device)  # 1 = a real, written slot
        if padding is not None:
            self.keys[:, :T] = padding.upto(T)
            self.pos = padding.positions(T - 1, T) + 1  # [B, 1]
        else:
            self.keys[:, :T] = 1
            self.pos = torch.full((B, 1), T, dtype=torch.long, device=kv.k_buf.device)
        self.step = _step_fn(backend)
        self.checked = False  # the first step of each generation evaluates dynamo's guards
        self.direct: Callable | None = None  # then the entry they chose runs directly (_entry_code)
        seen = _SEEN.setdefault(model, set())
        key = (backend, B, slots, kv.k_buf.dtype)
        self.first = key not in seen  # the first call for this shape compiles: it is timed
        seen.add(key)
        if kv.k_buf.device.type == "cpu":  # the int4 kernel layout, built now: tracing cannot cache it
            for module in model.modules():
                if isinstance(module, Int4Linear):
                    module.prepare()

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        """tok [B, 1] -> next-token logits [B, V] (fp32); advances the slot and positions."""
        self.keys.index_fill_(1, self.slot, 1)
        t0 = time.perf_counter()
        # Every later step of this generation passes what the first one did (same model, cache buffers,
        # shapes; only the tensors' values advance), so dynamo's guards, checked on the first step, are not
        # evaluated again: their check over every parameter costs ~1.5 ms a step on a 30-layer model.
        if self.direct is not None:
            logits = self.direct(self.model, tok, self.pos, self.keys, self.cache)
        elif self.checked:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                logits = self.step(self.model, tok, self.pos, self.keys, self.cache)
        else:
            logits = self.step(self.model, tok, self.pos, self.keys, self.cache)
            self.checked = True
            self.direct = _entry_code(dict(model=self.model, tok=tok, pos=self.pos, keys=self.keys,
                                           cache=self.cache))
        if self.first:
            self.first = False
            _SECONDS[self.model] = _SECONDS.get(self.model, 0.0) + time.perf_counter() - t0
        self.slot += 1
        self.pos += 1
        return logits
