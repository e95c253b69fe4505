"""The engine on its own thread, fed by asyncio request handlers.

One thread steps the engine while there is work and sleeps when there is none. Handlers never wait for it:
they check a request (read-only, in their own thread) and drop it, or an abort, into an inbox that the
engine thread empties between two steps, so the event loop keeps streaming while a step runs. Each request
gets its sequences' progress as events on an asyncio queue, pushed from the engine thread with
``call_soon_threadsafe``. Events carry what is new since the last one: token ids, text, log-probabilities.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from .engine import Engine, Seq
from .params import SamplingParams


@dataclass
class Event:
    """What one sequence produced since its last event."""

    request_id: str
    index: int
    tokens: list[int]
    text: str
    logprobs: list
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Handle:
    """A request in flight: its sequences and the queue its events arrive on."""

    request_id: str
    seqs: list[Seq]
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    sent: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # index -> (tokens, chars, logprobs)
    open: int = 0  # sequences not finished yet
    error: str | None = None  # the engine refused the request after all

    async def events(self) -> AsyncIterator[Event]:
        while self.open:
            ev = await self.queue.get()
            if ev.finish_reason is not None:
                self.open -= 1
            yield ev


class Runner:
    """Drive ``engine`` from a daemon thread; ``max_requests`` bounds the requests in flight."""

    def __init__(self, engine: Engine, *, max_requests: int = 256) -> None:
        self.engine, self.max_requests = engine, max_requests
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.handles: dict[str, Handle] = {}
        self.ttft: deque[float] = deque(maxlen=1000)  # seconds, the latest requests
        self.ttft_sum, self.ttft_count = 0.0, 0
        self.recent: deque[tuple[float, int]] = deque(maxlen=4096)  # (time, tokens) per step, for tokens/s
        self.errors = 0
        self.inbox: deque[tuple] = deque()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="groundup-engine", daemon=True)
        self.thread.start()

    @property
    def in_flight(self) -> int:
        return len(self.handles)

    def submit(self, prompt: Sequence[int], params: SamplingParams, adapter: str | None,
               loop: asyncio.AbstractEventLoop, request_id: str, queue: asyncio.Queue | None = None) -> Handle:
        """Queue a request (checked first: ParamError, KeyError); raises OverflowError when full. Its events
        go to ``queue`` (several requests may share one) or to a queue of its own."""
        if len(self.handles) >= self.max_requests:
            raise OverflowError(f"{len(self.handles)} requests in flight, the server's limit "
                                f"(--max-requests {self.max_requests}): retry later")
        self.engine.check(prompt, params, adapter)  # reads the engine's settings only
        handle = Handle(request_id, [], queue if queue is not None else asyncio.Queue(), loop, open=params.n)
        self.handles[request_id] = handle
        self.inbox.append(("add", handle, list(prompt), params, adapter))
        self.wake.set()
        return handle

    def abort(self, request_id: str) -> None:
        """Forget a request whose client went away; its sequences stop and free their blocks at the next
        step boundary."""
        if self.handles.pop(request_id, None) is not None:
            self.inbox.append(("abort", request_id))
            self.wake.set()

    def _drain(self) -> None:
        """Apply the inbox (engine thread, between steps)."""
        while self.inbox:
            cmd = self.inbox.popleft()
            if cmd[0] == "abort":
                self.engine.abort(cmd[1])
                continue
            _, handle, prompt, params, adapter = cmd
            try:
                handle.seqs = self.engine.add(prompt, params, adapter=adapter, request_id=handle.request_id)
            except Exception as e:  # the engine changed since the check (an adapter re-registered ...)
                handle.error = f"{type(e).__name__}: {e}"
                self.handles.pop(handle.request_id, None)
                for i in range(params.n):
                    ev = Event(handle.request_id, i, [], "", [], "error", handle.error)
                    handle.loop.call_soon_threadsafe(handle.queue.put_nowait, ev)
                continue
            for s in handle.seqs:
                handle.sent[s.index] = (0, 0, 0)
            if handle.request_id not in self.handles:  # aborted before it was added
                self.engine.abort(handle.request_id)

    def call(self, fn, *args):
        """Run ``fn(*args)`` between two engine steps (registering or mixing adapters, an attention map)."""
        with self.lock:
            return fn(*args)

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.stopped:
            with self.lock:
                self._drain()
            if not self.engine.has_work:
                self.wake.wait(timeout=0.5)
                self.wake.clear()
                continue
            with self.lock:
                before = self.engine.stats["generated_tokens"]
                changed = self.engine.step()
                self.recent.append((time.perf_counter(), self.engine.stats["generated_tokens"] - before))
                for seq in changed:
                    self._publish(seq)

    def _publish(self, seq: Seq) -> None:
        handle = self.handles.get(seq.request_id)
        if handle is None:
            return
        n_tok, n_chr, n_lp = handle.sent[seq.index]
        text = seq.visible_text()
        ev = Event(seq.request_id, seq.index, seq.output[n_tok:], text[n_chr:], seq.logprobs[n_lp:],
                   seq.finish_reason, seq.error)
        if not (ev.tokens or ev.text or ev.finish_reason):
            return
        handle.sent[seq.index] = (len(seq.output), len(text), len(seq.logprobs))
        if seq.first_token is not None and n_tok == 0 and ev.tokens:
            t = seq.first_token - seq.arrival
            self.ttft.append(t)
            self.ttft_sum, self.ttft_count = self.ttft_sum + t, self.ttft_count + 1
        if seq.finish_reason == "error":
            self.errors += 1
        if seq.finish_reason is not None and all(s.finished for s in handle.seqs):
            self.handles.pop(seq.request_id, None)
        handle.loop.call_soon_threadsafe(handle.queue.put_nowait, ev)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last ``window`` seconds."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self.recent) if now - t <= window]
        if not recent:
            return 0.0
        return sum(n for _, n in recent) / max(now - recent[0][0], 1e-3)
