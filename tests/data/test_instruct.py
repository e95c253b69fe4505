"""Instruction data: the three record shapes, answer-only targets (prompt tokens get no gradient), errors
with file and line, batches that resume in order."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import groundup as gu
from groundup.data.instruct import (
    SEPARATOR,
    Formatter,
    InstructionData,
    InstructionDataError,
    collate,
    load_examples,
    render_instruction,
)


@pytest.fixture(scope="module")
def tok():
    text = "the cat sat on the mat. what is two plus two? four. hello there, how are you? fine.\n" * 30
    return gu.Tokenizer.train([text], 320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                              eos_token="<|endoftext|>")


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_prompt_completion_targets_only_the_answer(tok):
    ex = Formatter(tok)({"prompt": "what is two plus two?", "completion": " four."}, "f:1")
    prompt = tok.encode("what is two plus two?" + SEPARATOR)
    answer = [*tok.encode(" four.", add_special_tokens=False), tok.eos_token_id]
    assert ex.ids == prompt + answer
    x, y = ex.tensors()
    assert torch.equal(x, torch.tensor(ex.ids[:-1]))
    n = len(prompt)
    assert bool((y[: n - 1] == -100).all())  # positions predicting prompt tokens are not trained
    assert y[n - 1:].tolist() == answer  # the last prompt position predicts the first answer token


def test_prompt_tokens_get_zero_gradient(tok):
    """Through the training loss (the fused lm_head + cross-entropy): the loss is the mean over answer
    tokens alone, and the final hidden state of every position that would predict a prompt token gets
    exactly zero gradient (nothing after the final norm mixes positions)."""
    ex = Formatter(tok, separator=" ->")({"prompt": "hello there", "completion": " fine."}, "f:1")
    x, y = collate([ex], pad_id=0)
    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config.preset("tiny-llama").replace(vocab_size=tok.vocab_size))
    keep = y[0] != -100
    with torch.no_grad():
        logits = model(x)
    want = torch.nn.functional.cross_entropy(logits[0, keep], y[0, keep])
    hidden = []

    def keep_output(module, inputs, out):
        out.retain_grad()
        hidden.append(out)

    model.norm.register_forward_hook(keep_output)
    loss = model(x, targets=y)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    loss.backward()
    grad = hidden[0].grad[0]  # [T, C]
    assert bool((grad[~keep] == 0).all())
    assert bool((grad[keep].abs().sum(-1) > 0).all())


def test_instruction_and_conversation_records(tok, tmp_path):
    path = _write(tmp_path / "d.jsonl", [
        {"instruction": "say hello", "context": "to the cat", "response": "hello cat"},
        {"instruction": "say hi", "output": "hi"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                      {"role": "assistant", "content": "fine."}, {"role": "user", "content": "and you?"},
                      {"role": "assistant", "content": "the cat"}]},
        {"conversations": [{"from": "human", "value": "<image>\nwhat is this?"}, {"from": "gpt", "value": "a mat"}]},
    ])
    a, b, c, d = load_examples([path], tok)
    assert tok.decode([t for t, m in zip(a.ids, a.answer, strict=True) if m]) == "hello cat<|endoftext|>"
    assert a.ids[: sum(1 for m in a.answer if not m)] == tok.encode(render_instruction("say hello", "to the cat"))
    assert "### Input" not in tok.decode(b.ids)
    # conversation: the answer tokens are exactly the two assistant turns as the template renders them
    answer_text = tok.decode([t for t, m in zip(c.ids, c.answer, strict=True) if m])
    assert "fine." in answer_text and "the cat" in answer_text and "hello" not in answer_text
    assert c.ids == tok.apply_chat_template([
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "fine."}, {"role": "user", "content": "and you?"},
        {"role": "assistant", "content": "the cat"}])
    assert "<image>" not in tok.decode(d.ids) and "a mat" in tok.decode([t for t, m in zip(d.ids, d.answer,
                                                                                              strict=True) if m])


@pytest.mark.parametrize("row,match", [
    ("{not json", r"d.jsonl:2: not valid JSON"),
    ({"prompt": "x"}, r"d.jsonl:2: missing field 'completion'"),
    ({"prompt": 3, "completion": "y"}, r"d.jsonl:2: field 'prompt' must be a string"),
    ({"text": "x"}, r"d.jsonl:2: unknown record"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"d.jsonl:2: .*no assistant turn"),
    ({"conversations": [{"from": "robot", "value": "hi"}]}, r"d.jsonl:2: turn 0 has from='robot'"),
    ({"instruction": "x", "response": ""}, r"d.jsonl:2:"),
])
def test_bad_records_name_file_and_line(tok, tmp_path, row, match):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, row])
    if match == r"d.jsonl:2:" and isinstance(row, dict) and row.get("response") == "":
        ex = load_examples([path], tok)  # an empty response still has the end-of-text token to learn
        assert sum(ex[1].answer) == 1
        return
    with pytest.raises(InstructionDataError, match=match):
        load_examples([path], tok)


def test_separator_inside_a_prompt_warns_with_the_line(tok, tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"},
                                         {"prompt": "a" + SEPARATOR + "b", "completion": "c"}])
    with pytest.warns(UserWarning, match=r"d.jsonl:2: the prompt contains the separator"):
        assert len(load_examples([path], tok)) == 2  # warned, not dropped
    with pytest.raises(InstructionDataError, match="more than the block"):
        load_examples([path], tok, max_len=3)


def test_batches_cover_an_epoch_and_resume_in_order(tok):
    fmt = Formatter(tok)
    examples = [fmt({"prompt": f"q {'cat ' * i}", "completion": f"a {'mat ' * i}"}, f"f:{i}") for i in range(10)]
    data = InstructionData.split(examples, val_fraction=0.2, pad_id=0, seed=3)
    assert len(data.val) == 2 and len(data.train) == 8
    seen = [data.next_batch(4)[0] for _ in range(2)]  # one epoch
    firsts = [tuple(r[r != 0].tolist()) for b in seen for r in b]
    assert len(set(firsts)) == 8  # every training example once
    state = data.state_dict()
    want = data.next_batch(4)
    again = InstructionData.split(examples, val_fraction=0.2, pad_id=0, seed=3)
    again.load_state_dict(state)
    got = again.next_batch(4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ranks = [again.next_batch(4, rank=r, world=2) for r in range(2)]
    assert ranks[0][0].shape[0] == 2


def test_group_by_length_pads_less_covers_each_epoch_once_and_mixes_lengths(tok):
    fmt = Formatter(tok)
    n = 901  # not a multiple of the batch: batches straddle epoch ends
    examples = [fmt({"prompt": f"q {i}", "completion": "a" + " mat" * (i * 7 % 23)}, f"f:{i}") for i in range(n)]
    plain = InstructionData.split(examples, val_fraction=0, pad_id=0, seed=1)
    grouped = InstructionData.split(examples, val_fraction=0, pad_id=0, seed=1, group_by_length=8)
    runs = {}
    for name, data in (("plain", plain), ("grouped", grouped)):
        batches = [data.next_batch(8)[0] for _ in range(3 * n // 8)]  # three epochs
        rows = [tuple(t for t in r.tolist() if t != 0) for b in batches for r in b]
        for e in range(2):  # (the third is not complete)
            assert len(set(rows[e * n: (e + 1) * n])) == n  # every example once per epoch
        runs[name] = batches
    tokens = {k: sum(b.numel() for b in v) for k, v in runs.items()}
    assert tokens["grouped"] < 0.8 * tokens["plain"]
    # batches are not in length order: consecutive batches' widths go up and down
    widths = [b.shape[1] for b in runs["grouped"][:50]]
    steps = [b - a for a, b in itertools.pairwise(widths)]
    ups, downs = sum(d > 0 for d in steps), sum(d < 0 for d in steps)
    assert ups > 10 and downs > 10
    # resume continues the same grouped order; another grouping refuses the checkpoint
    again = InstructionData.split(examples, val_fraction=0, pad_id=0, seed=1, group_by_length=8)
    again.load_state_dict({**grouped.state_dict(), "drawn": 8 * 120})
    assert torch.equal(again.next_batch(8)[0], runs["grouped"][120])
    with pytest.raises(ValueError, match="grouped by length for batch size 8"):
        plain.load_state_dict(grouped.state_dict())
    with pytest.raises(ValueError, match="for batch size 8, not 4"):
        again.next_batch(4)
