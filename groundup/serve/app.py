"""The OpenAI-compatible HTTP server: a Starlette app over the engine (run by uvicorn, `groundup serve`).

Routes: /v1/models, /v1/completions, /v1/chat/completions (server-sent events when streaming),
/v1/embeddings (encoder folders), /v1/adapters (register a peft folder at runtime), /health, /metrics
(Prometheus text) and / (the playground page). A model name is the served name, or "name:adapter" for a
registered adapter; rows of every adapter share each engine step.

Every request is bounded before work starts: body size (413), fields and values (400 naming the field),
unknown model or adapter (404), prompt + max_tokens within the context and the KV budget (400), requests in
flight (429), the API key when one is set (401). One request failing inside a step is a 500 for it alone.
A client that disconnects, streaming or not, has its sequences aborted and their blocks freed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .cascade import mean_logprob
from .embeddings import embed
from .engine import Engine, Seq
from .protocol import (
    APIError,
    bad,
    chat_logprobs,
    check_fields,
    check_params,
    completion_logprobs,
    embedding_item,
    envelope,
    new_id,
    prompts_of,
    request_error,
    sampling,
    usage,
)
from .runner import Event, Runner

log = logging.getLogger("groundup.serve")
PLAYGROUND = Path(__file__).with_name("playground.html")


@dataclass
class Limits:
    """What one request may ask for."""

    max_request_bytes: int = 1 << 20
    max_tokens: int = 4096
    max_requests: int = 256
    max_prompts: int = 64  # prompts in one completions request
    max_inputs: int = 256  # texts in one embeddings request


class Server:
    """The served model (a decoder through an Engine, or an encoder for embeddings) behind the routes."""

    def __init__(self, model, tokenizer, *, name: str, engine: Engine | None = None, api_key: str | None = None,
                 limits: Limits | None = None, cascade: list[tuple[str, float]] | None = None) -> None:
        self.model, self.tok, self.name, self.api_key = model, tokenizer, name, api_key
        self.limits = limits or Limits()
        self.engine = engine
        self.runner = Runner(engine, max_requests=self.limits.max_requests) if engine is not None else None
        self.cascade = cascade
        self.encoder_lock = asyncio.Lock()
        routes = [Route("/health", self.health), Route("/metrics", self.metrics), Route("/", self.playground),
                  Route("/v1/models", self.models), Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                  Route("/v1/adapters", self.add_adapter, methods=["POST"]),
                  Route("/v1/attention", self.attention, methods=["POST"])]
        self.app = Starlette(routes=routes, exception_handlers={APIError: self._api_error, Exception: self._crash},
                             lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app) -> AsyncIterator[None]:
        yield
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------------
    async def _api_error(self, request: Request, e: APIError) -> Response:
        return JSON(e.body(), status_code=e.status)

    async def _crash(self, request: Request, e: Exception) -> Response:
        log.exception("request failed")
        return JSON(APIError(500, f"{type(e).__name__}: {e}", type="server_error").body(), status_code=500)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    def _auth(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise APIError(401, "a valid API key is needed: Authorization: Bearer <key>", type="authentication_error",
                           code="invalid_api_key")

    async def _body(self, request: Request) -> dict:
        """An OpenAI request body: authorised, size-bounded JSON whose fields are all known (see _json)."""
        return check_fields(await self._json(request))

    async def _json(self, request: Request) -> Any:
        """The request's JSON after the API key check, read no further than --max-request-bytes (413)."""
        self._auth(request)
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body ({declared} bytes) is over the server's limit of {limit} bytes")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise APIError(413, f"the request body is over the server's limit of {limit} bytes")
        try:
            return json.loads(bytes(data))
        except json.JSONDecodeError as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None

    def _adapter(self, model: str) -> str | None:
        """The adapter a model name asks for (None: the base); 404 for a name this server does not serve."""
        base, _, adapter = model.partition(":")
        if base != self.name:
            raise APIError(404, f"model {model!r} is not served here (served: {', '.join(self._names())})",
                           code="model_not_found", param="model")
        if adapter and (self.engine is None or (adapter not in self.engine.adapters.names and "+" not in adapter)):
            raise APIError(404, f"adapter {adapter!r} is not registered (model {model!r}); see /v1/models",
                           code="model_not_found", param="model")
        return adapter or None

    async def _resolve(self, model: str) -> str | None:
        """_adapter, and a mix "base:a@0.7+b@0.3" of registered LoRA adapters built on first use (between two
        engine steps); 404 names an unknown part, 400 a malformed mix."""
        adapter = self._adapter(model)
        if adapter is not None and "+" in adapter:
            try:
                await asyncio.to_thread(self.runner.call, self.engine.adapters.mix, adapter)
            except (KeyError, ValueError) as e:
                raise request_error(e, param="model") from None
        return adapter

    def _names(self) -> list[str]:
        names = [self.name]
        if self.engine is not None:
            names += [f"{self.name}:{a}" for a in self.engine.adapters.names]
        if self.cascade:
            names.append("cascade")
        return names

    def _need_decoder(self) -> Engine:
        if self.engine is None:
            raise APIError(400, f"{self.name} is an encoder: it serves /v1/embeddings, not text generation")
        return self.engine

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, allowed_special="all")

    def submit(self, prompts: list[list[int]], params, adapter: str | None, queue: asyncio.Queue | None = None):
        """Queue one engine request per prompt (all or none); returns their handles."""
        loop, handles = asyncio.get_running_loop(), []
        try:
            for ids in prompts:
                handles.append(self.runner.submit(ids, copy.deepcopy(params), adapter, loop, new_id("seq"), queue))
        except (ValueError, KeyError, OverflowError) as e:  # ParamError is a ValueError
            for h in handles:
                self.runner.abort(h.request_id)
            raise request_error(e, param="model") from None
        return handles

    async def wait(self, request: Request, handles) -> None:
        """Until every sequence finished; aborts them all when the client goes away first."""
        async def drain(h):
            async for _ in h.events():
                pass

        task = asyncio.ensure_future(asyncio.gather(*(drain(h) for h in handles)))
        try:
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    raise asyncio.CancelledError
        finally:
            if not task.done():
                task.cancel()
                for h in handles:
                    self.runner.abort(h.request_id)
        failed = [h.error for h in handles if h.error] + [s.error for h in handles for s in h.seqs
                                                          if s.finish_reason == "error"]
        if failed:
            raise APIError(500, f"the request failed while decoding: {failed[0]}", type="server_error")

    def _max_tokens(self, params, prompt_len: int, adapter: str | None) -> None:
        """No max_tokens given: what the context leaves (chat), within the server's limit."""
        if params.max_tokens == -1:
            params.max_tokens = max(0, min(self.limits.max_tokens, self.engine.context - prompt_len -
                                           len(self.engine.adapters.prefix(adapter))))

    # -- routes -------------------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSON({"status": "ok", "model": self.name})

    async def playground(self, request: Request) -> Response:
        return FileResponse(PLAYGROUND, media_type="text/html")

    async def models(self, request: Request) -> Response:
        self._auth(request)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "groundup",
                 "parent": self.name if n != self.name else None} for n in self._names()]
        return JSON({"object": "list", "data": data})

    async def add_adapter(self, request: Request) -> Response:
        body = await self._adapter_body(request)
        engine = self._need_decoder()
        try:
            a = await asyncio.to_thread(self.runner.call, engine.adapters.register, body["name"], body["path"])
        except (ValueError, OSError) as e:
            raise APIError(400, str(e), param="path") from None
        return JSON({"id": f"{self.name}:{a.name}", "object": "model", "kind": a.kind})

    async def _adapter_body(self, request: Request) -> dict:
        body = await self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(body.get("path"), str):
            raise APIError(400, 'give {"name": ..., "path": "<a peft adapter folder on the server>"}')
        return body

    async def attention(self, request: Request) -> Response:
        """One head's attention probabilities over a text (the playground's heatmap): tokens and [T][T]."""
        body = await self._json(request)
        engine = self._need_decoder()
        try:
            text, layer, head = body["text"], int(body.get("layer", 0)), int(body.get("head", 0))
        except (KeyError, TypeError, ValueError):
            raise APIError(400, 'give {"text": ..., "layer": L, "head": H}') from None
        cfg = engine.cfg
        if not isinstance(text, str) or not text:
            raise bad("text", "must be a non-empty string")
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise bad("layer", f"layer must be in [0, {cfg.n_layers}) and head in [0, {cfg.n_heads})")
        ids = self._encode(text)[: min(64, engine.context)]  # a heatmap wider than 64 tokens is unreadable

        def weights():
            import torch

            with torch.no_grad():
                return self.model.attention_weights(torch.tensor([ids]), layer)[0, head].float().tolist()

        w = await asyncio.to_thread(self.runner.call, weights)
        return JSON({"tokens": [self.tok.decode([i]) for i in ids], "weights": w})

    async def metrics(self, request: Request) -> Response:
        lines = []

        def put(name: str, value: float, kind: str, doc: str) -> None:
            lines.extend([f"# HELP groundup_{name} {doc}", f"# TYPE groundup_{name} {kind}",
                          f"groundup_{name} {value}"])

        if self.runner is not None:
            m = self.engine.metrics()  # a snapshot without the lock: gauges may be one step apart
            put("queue_length", m["waiting"], "gauge", "sequences waiting for KV blocks or a batch slot")
            put("running_sequences", m["running"], "gauge", "sequences in the running batch")
            put("kv_blocks_used", m["kv_blocks_used"], "gauge", "KV cache blocks held")
            put("kv_blocks_total", m["kv_blocks_total"], "gauge", "KV cache blocks in the pool")
            put("requests_in_flight", self.runner.in_flight, "gauge", "requests not finished")
            put("prompt_tokens_total", m["prompt_tokens"], "counter", "prompt tokens prefilled")
            put("generation_tokens_total", m["generated_tokens"], "counter", "tokens generated")
            put("prefix_cache_hit_blocks_total", m["prefix_cache_hits"], "counter", "prompt blocks read from the cache")
            put("preemptions_total", m["preemptions"], "counter", "sequences preempted (recomputed later)")
            put("aborted_sequences_total", m["aborted"], "counter", "sequences stopped because their client left")
            put("request_errors_total", self.runner.errors, "counter", "sequences failed inside a step")
            put("generation_tokens_per_second", round(self.runner.tokens_per_second(), 3), "gauge",
                "tokens generated per second over the last 10 s")
            lines += ["# HELP groundup_time_to_first_token_seconds time from arrival to the first token",
                      "# TYPE groundup_time_to_first_token_seconds summary"]
            ttft = sorted(self.runner.ttft)
            for q in (0.5, 0.99):
                v = ttft[min(len(ttft) - 1, int(q * len(ttft)))] if ttft else 0.0
                lines.append(f'groundup_time_to_first_token_seconds{{quantile="{q}"}} {v:.6f}')
            lines += [f"groundup_time_to_first_token_seconds_sum {self.runner.ttft_sum:.6f}",
                      f"groundup_time_to_first_token_seconds_count {self.runner.ttft_count}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        engine = self._need_decoder()
        if body["model"] == "cascade" and self.cascade:
            return await self._cascade(request, body)
        adapter = await self._resolve(body["model"])
        params = sampling(body, chat=False, max_tokens_limit=self.limits.max_tokens)
        raw = prompts_of(body.get("prompt"))
        if len(raw) > self.limits.max_prompts:
            raise bad("prompt", f"{len(raw)} prompts in one request; at most {self.limits.max_prompts}")
        prompts = [self._encode(p) if isinstance(p, str) else list(p) for p in raw]
        if params.max_tokens == -1:  # "max_tokens": null
            params.max_tokens = 16
        check_params(params, engine.cfg.vocab_size)
        echo, n = bool(body.get("echo")), params.n
        texts = [p if isinstance(p, str) else self.tok.decode(ids) for p, ids in zip(raw, prompts, strict=True)]
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            queue: asyncio.Queue = asyncio.Queue()
            handles = self.submit(prompts, params, adapter, queue)
            order = {h.request_id: i for i, h in enumerate(handles)}
            return self._stream(handles, queue, "text_completion", body["model"], include_usage,
                                lambda h, ev, first: self._completion_delta(h, ev, first, echo, texts, order))
        handles = self.submit(prompts, params, adapter)
        await self.wait(request, handles)
        choices = []
        for i, h in enumerate(handles):
            for s in h.seqs:
                choices.append(self._completion_choice(i * n + s.index, s, echo, texts[i], params.logprobs))
        return JSON(envelope("text_completion", new_id("cmpl"), body["model"], choices,
                                     usage=self._usage(handles)))

    async def _cascade(self, request: Request, body: dict) -> Response:
        """A FrugalGPT cascade over served models (``--cascade``): each prompt goes to the stages in order and
        the first answer whose mean token log-probability reaches its stage's threshold is returned."""
        if body.get("stream") or body.get("echo") or (body.get("n") or 1) != 1:
            raise bad("model", "the cascade answers whole (a later stage may replace an answer): no stream, "
                      "echo or n > 1")
        params = sampling(body, chat=False, max_tokens_limit=self.limits.max_tokens)
        raw = prompts_of(body.get("prompt"))
        prompts = [self._encode(p) if isinstance(p, str) else list(p) for p in raw]
        want_lp = params.logprobs
        params.logprobs = want_lp or 0  # the scorer reads the answer's log-probabilities
        params.max_tokens = 16 if params.max_tokens == -1 else params.max_tokens
        check_params(params, self.engine.cfg.vocab_size)
        chosen: dict[int, tuple[Seq, int, float]] = {}
        todo = list(range(len(prompts)))
        for stage, (name, threshold) in enumerate(self.cascade):
            handles = self.submit([prompts[i] for i in todo], params, self._adapter(name))
            await self.wait(request, handles)
            rest = []
            for i, h in zip(todo, handles, strict=True):
                s = h.seqs[0]
                score = mean_logprob([lp for lp, _ in s.logprobs])
                if stage == len(self.cascade) - 1 or score >= threshold:
                    chosen[i] = (s, stage, score)
                else:
                    rest.append(i)
            todo = rest
            if not todo:
                break
        choices = []
        for i in range(len(prompts)):
            s, stage, score = chosen[i]
            c = self._completion_choice(i, s, False, "", want_lp)
            choices.append({**c, "cascade": {"model": self.cascade[stage][0], "stage": stage, "score": score}})
        n_out = sum(len(chosen[i][0].output) for i in chosen)
        return JSON(envelope("text_completion", new_id("cmpl"), "cascade", choices,
                                     usage=usage(sum(map(len, prompts)), n_out)))

    def _echoed(self, s: Seq) -> tuple[list[int], list]:
        """The prompt ids a client sent (a soft prompt's virtual ids dropped) and their log-probabilities."""
        virtual = len(self.engine.adapters.prefix(s.adapter))
        return s.prompt[virtual:], (s.prompt_logprobs[virtual:] if s.prompt_logprobs else [])

    def _completion_choice(self, index: int, s: Seq, echo: bool, prompt_text: str, logprobs: int | None) -> dict:
        text, lp = (prompt_text if echo else "") + s.text, None
        if logprobs is not None:
            ids, entries = self._echoed(s) if echo else ([], [])
            lp = completion_logprobs(self.tok, ids + s.output, list(entries) + s.logprobs, 0)
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": _reason(s)}

    def _completion_delta(self, h, ev: Event, first: bool, echo: bool, texts: list[str],
                          order: dict[str, int]) -> dict:
        i = order[h.request_id]  # which prompt of the request
        s = h.seqs[ev.index]
        text, lp = ev.text, None
        if echo and first:
            text = texts[i] + text
        if s.params.logprobs is not None:
            ids, entries = self._echoed(s) if (echo and first) else ([], [])
            lp = completion_logprobs(self.tok, ids + ev.tokens, list(entries) + list(ev.logprobs), 0)
        return {"index": i * s.params.n + ev.index, "text": text, "logprobs": lp,
                "finish_reason": _reason(s) if ev.finish_reason else None}

    def _usage(self, handles) -> dict:
        prompt = sum(len(self._echoed(h.seqs[0])[0]) for h in handles)
        return usage(prompt, sum(len(s.output) for h in handles for s in h.seqs))

    def _stream(self, handles, queue: asyncio.Queue, kind: str, model: str, include_usage: bool, delta) -> Response:
        rid, open_ = new_id("cmpl" if kind == "text_completion" else "chatcmpl"), sum(h.open for h in handles)
        by_id = {h.request_id: h for h in handles}
        chunk_kind = kind if kind == "text_completion" else "chat.completion.chunk"

        async def events():
            nonlocal open_
            seen: set[tuple[str, int]] = set()
            try:
                if kind != "text_completion":  # chat: every choice opens with the assistant's role
                    roles = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(open_)]
                    yield sse(envelope(chunk_kind, rid, model, roles))
                while open_:
                    ev: Event = await queue.get()
                    h = by_id[ev.request_id]
                    key = (ev.request_id, ev.index)
                    if ev.finish_reason is not None:
                        open_ -= 1
                    if ev.finish_reason == "error":
                        yield sse(APIError(500, f"the request failed while decoding: {ev.error}",
                                            type="server_error").body())
                        return
                    yield sse(envelope(chunk_kind, rid, model, [delta(h, ev, key not in seen)]))
                    seen.add(key)
                if include_usage:
                    yield sse(envelope(chunk_kind, rid, model, [], usage=self._usage(handles)))
                yield "data: [DONE]\n\n"
            finally:
                if open_:  # the client left (or a sequence failed): stop the rest now
                    for h in handles:
                        self.runner.abort(h.request_id)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        engine = self._need_decoder()
        adapter = await self._resolve(body["model"])
        messages = _messages(body.get("messages"))
        try:
            ids = self.tok.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as e:  # a template error names what the template disliked
            raise bad("messages", f"the chat template failed: {e}") from None
        params = sampling(body, chat=True, max_tokens_limit=self.limits.max_tokens)
        self._max_tokens(params, len(ids), adapter)
        check_params(params, engine.cfg.vocab_size)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            queue: asyncio.Queue = asyncio.Queue()
            handles = self.submit([ids], params, adapter, queue)
            return self._stream(handles, queue, "chat.completion", body["model"], include_usage, self._chat_delta)
        handles = self.submit([ids], params, adapter)
        await self.wait(request, handles)
        choices = [{"index": s.index, "message": {"role": "assistant", "content": s.text},
                    "logprobs": chat_logprobs(self.tok, s.output, s.logprobs) if params.logprobs is not None else None,
                    "finish_reason": _reason(s)} for s in handles[0].seqs]
        return JSON(envelope("chat.completion", new_id("chatcmpl"), body["model"], choices,
                                     usage=self._usage(handles)))

    def _chat_delta(self, h, ev: Event, first: bool) -> dict:
        s = h.seqs[ev.index]
        lp = chat_logprobs(self.tok, ev.tokens, ev.logprobs) if s.params.logprobs is not None else None
        return {"index": ev.index, "delta": {"content": ev.text} if ev.text else {}, "logprobs": lp,
                "finish_reason": _reason(s) if ev.finish_reason else None}

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        if self.engine is not None:
            raise APIError(400, f"{self.name} is a decoder; /v1/embeddings needs an encoder folder (BERT-style)")
        self._adapter(body["model"])
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
            raise bad("input", "must be a non-empty string or a list of them")
        if len(inputs) > self.limits.max_inputs:
            raise bad("input", f"{len(inputs)} texts; at most {self.limits.max_inputs} in one request")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad("encoding_format", "must be 'float' or 'base64'")

        async with self.encoder_lock:
            vecs, n = await asyncio.to_thread(embed, self.model, self.tok, inputs)
        data = [embedding_item(i, v, fmt) for i, v in enumerate(vecs.tolist())]
        return JSON({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": n, "total_tokens": n}})


def _reason(s: Seq) -> str:
    return "stop" if s.finish_reason == "stop" else "length"


# a lone surrogate: what a byte-level tokenizer decodes invalid UTF-8 to (tokenizer/tokenizer.py), which UTF-8
# cannot carry; sent as U+FFFD, as a client decoding the bytes with errors="replace" would see it
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _dumps(obj: Any) -> str:
    return _LONE_SURROGATE.sub("\ufffd", json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")))


class JSON(JSONResponse):
    """A JSON reply whose text may hold lone surrogates (sent as U+FFFD)."""

    def render(self, content: Any) -> bytes:
        return _dumps(content).encode("utf-8")


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as JSON."""
    return f"data: {_dumps(obj)}\n\n"


def _messages(messages: Any) -> list[dict]:
    """Chat messages with string contents (a list of text parts is joined); 400 naming the bad one."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise bad(f"messages[{i}]", "needs a role of system, user, assistant, developer or tool")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{i}].content", "only text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", "must be a string or a list of text parts")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out
