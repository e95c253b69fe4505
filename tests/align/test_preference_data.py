"""Preference data: rankings become their K(K-1)/2 pairs with each answer forwarded once, chat prompts, the
repairs that are counted (equal pairs dropped, prompts cut from the left) and file:line errors."""

from __future__ import annotations

import itertools
import json

import pytest

from groundup.data.instruct import InstructionDataError
from groundup.data.preference import (
    PreferenceData,
    collate_groups,
    load_preferences,
    load_prompts,
    unpaired,
)
from tests.align.align_util import TEXTS


@pytest.fixture(scope="module")
def tok():
    import groundup as gu

    return gu.Tokenizer.train(TEXTS, 300, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def write(tmp_path, records, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_ranking_of_k_gives_every_ordered_pair_and_each_answer_once(tok, tmp_path):
    comps = ["one", "two three", "four", "five six seven"]
    ranking = [2, 0, 3, 1]  # best first
    path = write(tmp_path, [{"prompt": "count", "completions": comps, "ranking": ranking}])
    groups, stats = load_preferences([path], tok)
    (g,) = groups
    assert stats.pairs == 6 == len(g.pairs)
    assert {(a, b) for a, b, _ in g.pairs} == set(itertools.combinations(ranking, 2))
    b = collate_groups(groups, tok.pad_token_id)
    assert b.ids.shape[0] == 4  # four rows, not twelve: each completion is forwarded once for its three pairs
    for i, c in enumerate(comps):  # each row is the prompt's ids then exactly the answer's, marked by the mask
        assert b.ids[i][b.mask[i]].tolist() == [*tok.encode(c, add_special_tokens=False), tok.eos_token_id]
    # KTO's view: the top half desirable, the bottom half not
    assert g.labels == [True, False, True, False]


def test_pairs_and_margins_and_chat_prompts(tok, tmp_path):
    msgs = [{"role": "user", "content": "what is two plus two?"}]
    path = write(tmp_path, [{"prompt": "say", "chosen": "yes", "rejected": "no", "margin": 0.5},
                            {"prompt": msgs, "chosen": "four", "rejected": [{"role": "assistant", "content": "five"}]}])
    groups, _ = load_preferences([path], tok)
    assert groups[0].pairs == [(0, 1, 0.5)]
    chat = groups[1]
    assert chat.prompt == tok.apply_chat_template(msgs, add_generation_prompt=True)
    full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": "four"}])
    assert chat.prompt + chat.completions[0] == full  # the answer is what the template adds after the prompt


def test_equal_pairs_are_dropped_and_counted(tok, tmp_path):
    path = write(tmp_path, [{"prompt": "a", "chosen": "yes", "rejected": "yes"},
                            {"prompt": "b", "chosen": "yes", "rejected": "no"},
                            {"prompt": "c", "completions": ["one", "one", "two"], "ranking": [0, 1, 2]}])
    with pytest.warns(UserWarning, match=r"2 pair\(s\) dropped: chosen and rejected are the same answer \(first at "
                      r".*d.jsonl:1\)"):
        groups, stats = load_preferences([path], tok)
    assert stats.equal_dropped == 2 and stats.pairs == 3
    assert [g.source.rsplit(":", 1)[1] for g in groups] == ["2", "3"]  # the all-equal record is gone


def test_prompts_are_cut_from_the_left_to_fit(tok, tmp_path):
    long_prompt = " ".join(["one two three"] * 20)
    path = write(tmp_path, [{"prompt": long_prompt, "chosen": "yes", "rejected": "no no no"},
                            {"prompt": "x", "chosen": " ".join(["nine"] * 40), "rejected": "no"}])
    with pytest.warns(UserWarning, match="cut from the left"):
        groups, stats = load_preferences([path], tok, max_len=24)
    assert stats.truncated == 1 and stats.too_long_dropped == 1
    (g,) = groups
    assert g.length == 24
    full = tok.encode(long_prompt + "\n\n###\n\n")
    assert g.prompt == full[-len(g.prompt):]  # the end of the prompt is kept, the answers whole
    assert g.completions[1] == [*tok.encode("no no no", add_special_tokens=False), tok.eos_token_id]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"d.jsonl:2: not valid JSON"),
    ({"prompt": "a", "chosen": "yes"}, r"d.jsonl:2: unknown record"),
    ({"prompt": "a", "completions": ["x", "y"], "ranking": [0, 0]}, r"d.jsonl:2: field 'ranking' must list"),
    ({"prompt": "a", "chosen": "yes", "rejected": "no", "score": 1}, r"d.jsonl:2: a pair does not take.*score"),
    ({"prompt": "a", "chosen": "", "rejected": "no"}, r"d.jsonl:2: field 'chosen' is empty"),
    ({"prompt": "a", "completion": "yes", "label": True}, r"d.jsonl:2: an unpaired record"),
    ({"prompt": "a", "chosen": "yes", "rejected": "no", "margin": "big"}, r"d.jsonl:2: field 'margin'"),
    ({"prompt": 3, "chosen": "yes", "rejected": "no"}, r"d.jsonl:2: field 'prompt'"),
])
def test_bad_records_name_file_and_line(tok, tmp_path, line, message):
    path = write(tmp_path, [{"prompt": "ok", "chosen": "yes", "rejected": "no"}, line])
    with pytest.raises(InstructionDataError, match=message):  # PreferenceDataError's base: JSON errors too
        load_preferences([path], tok)


def test_kto_view_pairs_each_answer_with_another_prompts_answer(tok, tmp_path):
    path = write(tmp_path, [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no " * (i + 1)} for i in range(3)]
                 + [{"prompt": "q", "completion": "four", "label": False}])
    groups, _ = load_preferences([path], tok, need="labels")
    flat = unpaired(groups, seed=1)
    assert len(flat) == 7 and sum(g.labels[0] for g in flat) == 3
    for i, g in enumerate(flat):
        assert g.kl == flat[i - 1].completions[0]
    b = collate_groups(flat, tok.pad_token_id)
    assert b.kl_ids.shape[0] == 7 and b.labels.tolist() == [int(g.labels[0]) for g in flat]


def test_batches_resume_in_the_same_order(tok, tmp_path):
    path = write(tmp_path, [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(10)])
    groups, _ = load_preferences([path], tok)
    a = PreferenceData.split(groups, val_fraction=0.2, pad_id=0, seed=3)
    seq = [a.next_batch(3).ids.tolist() for _ in range(5)]
    b = PreferenceData.split(groups, val_fraction=0.2, pad_id=0, seed=3)
    b.next_batch(3), b.next_batch(3)
    c = PreferenceData.split(groups, val_fraction=0.2, pad_id=0, seed=3)
    c.load_state_dict(b.state_dict())
    assert [c.next_batch(3).ids.tolist() for _ in range(3)] == seq[2:]


def test_prompt_records_keep_their_fields(tok, tmp_path):
    path = write(tmp_path, [{"prompt": "2 + 2 =", "completion": " 2 + 2 = 4", "kind": "add"}])
    (p,) = load_prompts([path], tok)
    assert p.record["kind"] == "add" and p.prompt == tok.encode("2 + 2 =\n\n###\n\n")
