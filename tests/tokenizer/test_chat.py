"""Chat templates render as transformers renders them; ChatML when a tokenizer has none."""

from __future__ import annotations

import pytest

from groundup import Tokenizer
from groundup.tokenizer.chat import DEFAULT_TEMPLATE, TemplateError

# A Llama-2 style template (written for this test): system folded into the first user turn, strict
# user/assistant alternation enforced with raise_exception.
LLAMA2_STYLE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set sys = none %}{% endif %}"
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "{% if m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' }}{% if loop.first and sys %}{{ '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{{ m['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there "},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2? Answer with <s> tags."}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, corpus):
    tok = Tokenizer.train([corpus[:100_000]], 500, special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                          bos_token="<s>", eos_token="</s>", chat_template=LLAMA2_STYLE)
    path = tmp_path_factory.mktemp("chat")
    tok.save_pretrained(path)
    return path


def test_template_renders_and_tokenizes_like_transformers(folder):
    from transformers import PreTrainedTokenizerFast

    gu, fast = Tokenizer.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(str(folder))
    for messages in (CHAT, CHAT[1:2], CHAT[:2]):
        text = gu.apply_chat_template(messages, tokenize=False)
        assert text == fast.apply_chat_template(messages, tokenize=False)
        assert gu.apply_chat_template(messages) == fast(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("<s>[INST] <<SYS>>\nYou are terse.")


def test_default_chatml_template_matches_transformers_given_the_same_template(folder):
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_pretrained(folder)
    tok.chat_template = None
    fast = PreTrainedTokenizerFast.from_pretrained(str(folder))
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text == fast.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False,
                                            chat_template=DEFAULT_TEMPLATE)
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True)
    assert ids.count(tok.token_to_id("<|im_start|>")) == 5  # the role markers are control tokens


def test_template_file_and_named_templates(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "f")
    (tmp_path / "f" / "chat_template.jinja").write_text("{{ messages | length }} turns", encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path / "f")
    assert tok.apply_chat_template(CHAT, tokenize=False) == "4 turns"
    tok.chat_template = {"default": "D", "tool_use": "T"}
    assert tok.apply_chat_template(CHAT, tokenize=False) == "D"
    assert tok.apply_chat_template(CHAT, tokenize=False, tools=[{"name": "f"}]) == "T"
    assert tok.apply_chat_template(CHAT, tokenize=False, template="tool_use") == "T"


def test_bad_messages_and_templates_get_clear_errors(folder):
    tok = Tokenizer.from_pretrained(folder)
    with pytest.raises(TemplateError, match="roles must alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[1\] has no string 'role'"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"content": "b"}])
    with pytest.raises(TypeError, match="list of"):
        tok.apply_chat_template("hello")
    with pytest.raises(TemplateError, match="syntax error at line 1"):
        tok.apply_chat_template(CHAT, template="{% for %}")
