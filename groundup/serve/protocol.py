"""The OpenAI API's request and response shapes, read into and written from the engine's terms.

Requests are plain JSON checked field by field (an ``APIError`` names the field and becomes a 4xx);
responses follow the OpenAI reference for completions (legacy logprobs: tokens, token_logprobs,
top_logprobs, text_offset, which lm-evaluation-harness's local-completions reads), chat completions (logprobs
content with bytes) and embeddings (float lists or base64 float32, which the official client asks for).
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any

from .params import ParamError, SamplingParams


class APIError(Exception):
    """An error the client caused or should see: HTTP ``status``, OpenAI error ``type``, the ``param``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param)


UNSUPPORTED = {"suffix": None, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None,
               "tools": None, "functions": None, "response_format": None}
KNOWN = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
         "stream", "stream_options", "logprobs", "top_logprobs", "echo", "stop", "seed", "user",
         "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids", "input", "encoding_format",
         "dimensions", "tool_choice", "parallel_tool_calls", "store", "metadata", "service_tier", *UNSUPPORTED}


def check_fields(body: Any) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for k, default in UNSUPPORTED.items():
        if body.get(k, default) not in (default, [], {}):
            raise bad(k, "is not supported by this server")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise bad(unknown[0], "unknown field")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad("model", "give the model's name (see /v1/models)")
    return body


def sampling(body: dict, *, chat: bool, max_tokens_limit: int) -> SamplingParams:
    """SamplingParams from a request body (OpenAI defaults: temperature 1, max_tokens 16 for completions,
    the rest of the context for chat); raises APIError naming the field."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if chat:
        logprobs = body.get("top_logprobs", 0) if body.get("logprobs") else None
        if body.get("top_logprobs") is not None and not body.get("logprobs"):
            raise bad("top_logprobs", "needs logprobs: true")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        logprobs, max_tokens = body.get("logprobs"), body.get("max_tokens", 16)
    if max_tokens is not None and isinstance(max_tokens, int) and max_tokens > max_tokens_limit:
        raise bad("max_tokens" if "max_tokens" in body else "max_completion_tokens",
                  f"{max_tokens} is more than this server allows ({max_tokens_limit})")
    params = SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else -1,  # -1: the rest of the context (set by the caller)
        temperature=body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0,
        top_p=body.get("top_p"), top_k=body.get("top_k"),
        repetition_penalty=body.get("repetition_penalty", 1.0), stop=stop if stop is not None else [],
        stop_token_ids=body.get("stop_token_ids", []) or [], ignore_eos=bool(body.get("ignore_eos", False)),
        min_tokens=body.get("min_tokens", 0), seed=body.get("seed"), logprobs=logprobs,
        prompt_logprobs=logprobs if (body.get("echo") and logprobs is not None) else None,
        n=1 if body.get("n") is None else body["n"])
    return params


def request_error(e: Exception, *, param: str | None = None) -> APIError:
    """The APIError of what the engine refused: a ParamError names its field (400), a KeyError is an unknown
    adapter (404), an OverflowError a full server (429), another ValueError a bad ``param`` (400)."""
    if isinstance(e, ParamError):
        return bad(e.field, e.message)
    if isinstance(e, KeyError):
        return APIError(404, str(e.args[0]), code="model_not_found", param="model")
    if isinstance(e, OverflowError):
        return APIError(429, str(e), type="rate_limit_error")
    return APIError(400, str(e), param=param)


def check_params(params: SamplingParams, vocab_size: int) -> None:
    try:
        params.check(vocab_size)
    except ParamError as e:
        raise request_error(e) from None


def prompts_of(prompt: Any) -> list[str | list[int]]:
    """The completions API's prompt forms: a string, a list of strings, a list of ids, a list of id lists."""
    def ids(x) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str):
        return [prompt]
    if ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids(p) for p in prompt):
        return list(prompt)
    raise bad("prompt", "must be a string, a list of strings, a list of token ids or a list of such lists")


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def completion_logprobs(tok, ids: list[int], entries: list, offset: int) -> dict:
    """Legacy logprobs over ``ids`` (entries: (logprob, {id: logprob}) or None per id); offsets from ``offset``."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = offset
    for t, e in zip(ids, entries, strict=True):
        piece = token_text(tok, t)
        tokens.append(piece)
        offsets.append(pos)
        pos += len(piece)
        lps.append(None if e is None else e[0])
        tops.append(None if e is None else {token_text(tok, a): lp for a, lp in e[1].items()})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tok, ids: list[int], entries: list) -> dict:
    def one(t: int, lp: float) -> dict:
        text = token_text(tok, t)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(t, e[0]), "top_logprobs": [one(a, lp) for a, lp in e[1].items()]}
                        for t, e in zip(ids, entries, strict=True)]}


def token_text(tok, t: int) -> str:
    return tok.decode([t]) if tok is not None else str(t)


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def envelope(kind: str, rid: str, model: str, choices: list, **extra) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


def embedding_item(i: int, vec: list[float], fmt: str) -> dict:
    if fmt == "base64":
        data: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
    else:
        data = vec
    return {"object": "embedding", "index": i, "embedding": data}
