"""Text a byte-level tokenizer decodes from invalid UTF-8 holds lone surrogates; the server sends each as U+FFFD
(a JSON body must be UTF-8), in a reply and in a stream event alike, rather than failing the request."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")

from groundup.serve import app


def test_lone_surrogates_are_sent_as_replacement_characters():
    body = app.JSON({"text": "a\udb33b", "n": 1}).body
    assert json.loads(body.decode("utf-8")) == {"text": "a\ufffdb", "n": 1}
    event = app.sse({"text": "\udc80x"})
    assert json.loads(event.removeprefix("data: ")) == {"text": "\ufffdx"}
