"""`groundup tokenizer train | encode | decode | stats`."""

from __future__ import annotations

import json

from tokenizers import Tokenizer as HFTokenizer

from groundup.cli import main

from .conftest import unicode_text


def test_train_encode_decode_stats(tmp_path, capsys, corpus):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text(corpus[:60_000], encoding="utf-8")
    (tmp_path / "data" / "b.txt").write_bytes(unicode_text(3000).encode() + b"\xff stray byte\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "data" / "*.txt"), "--vocab-size", "700",
                 "--out", str(out), "--eos-token", "<|endoftext|>", "--quiet"]) == 0
    assert "trained 700 tokens" in capsys.readouterr().out
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"

    text = "def main():\n    return 'naïve café 🙂'"
    assert main(["tokenizer", "encode", str(out), text]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == HFTokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids

    assert main(["tokenizer", "decode", str(out), *map(str, ids)]) == 0
    assert capsys.readouterr().out == text + "\n"

    assert main(["tokenizer", "encode", str(out), "x<|endoftext|>", "--allow-special", "--tokens"]) == 0
    assert json.loads(capsys.readouterr().out)[-1] == "<|endoftext|>"

    assert main(["tokenizer", "stats", str(out), "--file", str(tmp_path / "data" / "a.txt")]) == 0
    report = capsys.readouterr().out
    for field in ("bytes/token", "tokens/word", "vocabulary used"):
        assert field in report
    bytes_per_token = float(report.split("bytes/token")[1].split()[0])
    assert 1.5 < bytes_per_token < 6


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(tmp_path / "none*.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no file matches" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("hello hello", encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "c.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "decode", str(tmp_path / "o"), "1", "x"]) == 2
    assert "'x' is not an integer" in capsys.readouterr().err
    assert main(["tokenizer", "decode", str(tmp_path / "o"), "99999"]) == 2
    assert "99999 is not in the vocabulary" in capsys.readouterr().err
    assert main(["tokenizer", "encode", str(tmp_path / "o"), "hi <|endoftext|>"]) == 2
    assert "--allow-special" in capsys.readouterr().err
    assert main(["tokenizer", "encode", str(tmp_path / "nowhere"), "hi"]) == 2
    assert "no such file" in capsys.readouterr().err
