"""`groundup arithmetic data` / `report`: disjoint Goat-style sets, and a table that scores fine-tuning runs
(exact match of the final answer, per task) next to few-shot prompting of the base."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.cli import main
from groundup.data.arithmetic import final_answer, kind_of, operands
from groundup.eval.arithmetic import exact_match, load_run, read_problems


@pytest.fixture(scope="module")
def goat(tmp_path_factory):
    """A tiny llama with a one-token-per-digit tokenizer, Goat data, and a full fine-tuning run that has
    memorised its (small) training set, which is also scored as the test set."""
    root = tmp_path_factory.mktemp("goat")
    assert main(["arithmetic", "data", "--train", "12", "--test", "8", "--digits", "1", "--kinds", "add", "sub",
                 "--facts", "40", "--out", str(root)]) == 0
    train = read_problems(root / "train.jsonl")
    texts = [r["prompt"] + r["completion"] for r in train] * 5 + ["minus Calculate What is Therefore"]
    tok = gu.Tokenizer.train(texts, 320, special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>",
                             pattern="digits")
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4,
                                                 n_kv_heads=2, d_ff=128)
    base = root / "base"
    gu.CausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    run = root / "full"
    assert main(["finetune", str(base), "--data", str(root / "train.jsonl"), "--method", "full", "--steps", "150",
                 "--batch-size", "12", "--lr", "3e-3", "--val-fraction", "0", "--eval-every", "150",
                 "--save-every", "150", "--out", str(run), "--quiet"]) == 0
    return root, base, run, train


def test_data_sets_are_disjoint_and_well_formed(goat):
    root, _, _, train = goat
    test = read_problems(root / "test.jsonl")
    assert len(train) == 12 and len(test) == 8
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert {kind_of(r) for r in train} == {"add", "sub"}
    for r in train + test:  # the completion's final answer is the arithmetic of the prompt
        a, op, b = r["completion"].split()[:3]
        assert int(final_answer(r["completion"])) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    facts = (root / "facts.txt").read_text().splitlines()  # pretraining text: no test pair in either order
    assert len(facts) == 40
    pairs = {operands(r["prompt"]) for r in test}
    assert not [f for f in facts if operands(f) in pairs or operands(f)[::-1] in pairs]


def test_report_scores_runs_and_few_shot_in_one_table(goat, tmp_path, capsys):
    root, base, run, train = goat
    (tmp_path / "train.jsonl").write_text((root / "train.jsonl").read_text())
    (tmp_path / "test.jsonl").write_text((root / "train.jsonl").read_text())  # memorised: scored as test
    out = tmp_path / "table.md"
    assert main(["arithmetic", "report", str(base), "--test", str(tmp_path / "test.jsonl"), "--runs", str(run),
                 "--shots", "2", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split(" | ")[-2:] == ["add", "sub |"]
    shot_row, full_row = lines[2].split(" | "), lines[3].split(" | ")
    assert shot_row[0] == "| 2-shot prompting (no training)" and shot_row[1] == "0"
    assert full_row[0] == "| full" and full_row[2] == "100.000%"
    assert float(full_row[5].rstrip("%")) >= 75.0  # the run learnt its examples; the table says so
    assert lines[3] in capsys.readouterr().out
    # the run's column agrees with scoring each record by hand: greedy answer vs the reference
    model, prefix, _ = load_run(run, base)
    tok = gu.Tokenizer.from_pretrained(base)
    right = exact_match(model, tok, train, prefix=prefix, batch=5)  # batches of uneven prompts
    for rec, ok in zip(train, right, strict=True):
        ids = tok.encode(rec["prompt"] + "\n\n###\n\n")
        out_ids = gu.generate(model, [ids], 12, eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        text = tok.decode([t for t in out_ids if t != tok.eos_token_id], skip_special_tokens=True)
        assert ok == (final_answer(text) == final_answer(rec["completion"]))
    assert f"{100 * sum(right) / len(right):.1f}%" == full_row[5]


def test_report_bad_input_fails_before_scoring(goat, tmp_path, capsys):
    root, base, _, _ = goat
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"prompt": "1 + 1 ="}\n')
    assert main(["arithmetic", "report", str(base), "--test", str(bad), "--shots", "0"]) == 2
    assert f"{bad}:1: needs string fields 'prompt' and 'completion'" in capsys.readouterr().err
    assert main(["arithmetic", "report", str(base), "--test", str(root / "test.jsonl"), "--runs",
                 str(tmp_path / "nowhere"), "--shots", "0"]) == 2
    assert "not a finished `groundup finetune` run" in capsys.readouterr().err
    assert main(["arithmetic", "report", str(base), "--test", str(root / "test.jsonl"), "--shots", "50"]) == 2
    assert "--shots 50: only 12 solved examples" in capsys.readouterr().err
