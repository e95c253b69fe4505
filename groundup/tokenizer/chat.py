"""Chat templates: the Jinja template of tokenizer_config.json applied to [{role, content}, ...].

Rendering matches transformers' `apply_chat_template`: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, the `tojson` filter, `raise_exception` and `strftime_now`, and the tokenizer's special
tokens (bos_token, eos_token, ...) as variables. A tokenizer without a template uses ChatML.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

# ChatML (OpenAI): every turn is <|im_start|>role\ncontent<|im_end|>\n.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """A chat template failed to render, or raised on purpose (raise_exception)."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str):
    try:
        from jinja2 import TemplateSyntaxError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 is a dependency
        raise ImportError("chat templates need jinja2: pip install jinja2") from e
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None


def check_messages(messages: Sequence[Any]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] is {type(m).__name__}, expected a dict with 'role' and 'content'")
        if not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] has no string 'role' (e.g. 'system', 'user', 'assistant')")
        if "content" not in m and "tool_calls" not in m:
            raise ValueError(f"messages[{i}] (role {m['role']!r}) has no 'content'")


def pick_template(tok: Tokenizer, template: str | None, tools: Any) -> str:
    """`template` may be Jinja source or the name of one of the tokenizer's named templates."""
    own = tok.chat_template
    if isinstance(own, dict):
        if template in own:
            return own[template]
        if template is None:
            name = "tool_use" if tools and "tool_use" in own else "default"
            if name not in own:
                raise TemplateError(f"the tokenizer has chat templates {sorted(own)} but none named 'default'; "
                                    "pass template=<name>")
            return own[name]
    if template is not None:
        return template
    return own if isinstance(own, str) else DEFAULT_TEMPLATE


def render(tok: Tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = False,
           template: str | None = None, **kwargs: Any) -> str:
    """The chat as one string, exactly as the template writes it."""
    check_messages(messages)
    source = pick_template(tok, template, kwargs.get("tools"))
    variables: dict[str, Any] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = tok.config.get(name)
        if value is not None:
            variables[name] = value.get("content") if isinstance(value, dict) else value
    variables.update(kwargs)
    try:
        return _compile(source).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                       **variables)
    except TemplateError:
        raise
    except Exception as e:  # jinja errors (undefined names, type errors in the template)
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
