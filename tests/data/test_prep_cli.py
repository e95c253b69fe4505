"""`groundup prep-data`: redaction, blocklist, duplicates and augmentation on a JSONL file, drops reported
with line numbers, answers never rewritten."""

from __future__ import annotations

import json

from groundup.cli import main


def test_prep_data_cleans_reports_and_augments(tmp_path, capsys):
    rows = [{"prompt": "email me at ann@example.com about the fox", "completion": " ok"},
            {"prompt": "email me at ann@example.com about the fox", "completion": " ok"},
            {"prompt": "this has a banned word inside", "completion": " no"},
            {"messages": [{"role": "user", "content": "call 555-123-4567 quick"},
                          {"role": "assistant", "content": "quick reply"}]}]
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "block.txt").write_text("banned\n")
    (tmp_path / "syn.json").write_text(json.dumps({"quick": ["fast"], "fox": ["vixen"]}))
    out = tmp_path / "clean.jsonl"
    assert main(["prep-data", str(src), "--out", str(out), "--redact-pii", "--blocklist", str(tmp_path / "block.txt"),
                 "--dedup", "exact", "--augment", "1", "--synonyms", str(tmp_path / "syn.json"), "--p-synonym", "1",
                 "--seed", "0"]) == 0
    report = capsys.readouterr().out
    assert "raw.jsonl:2: exact duplicate of" in report and "raw.jsonl:1" in report
    assert "raw.jsonl:3: blocked word 'banned'" in report
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 4  # two kept records, each with one augmented copy
    assert got[0]["prompt"] == "email me at [EMAIL] about the fox"
    assert got[1]["prompt"] == "email me at [EMAIL] about the vixen" and got[1]["completion"] == " ok"
    assert got[2]["messages"][0]["content"] == "call [PHONE] quick"
    assert got[3]["messages"][0]["content"] == "call [PHONE] fast"
    assert got[3]["messages"][1]["content"] == "quick reply"  # the answer is never rewritten
    assert main(["prep-data", str(src), "--out", str(out), "--augment", "2"]) == 2
    assert "needs at least one rewrite" in capsys.readouterr().err
