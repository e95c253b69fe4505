"""The command line: calc figures, presets, demo, and clean errors."""

from __future__ import annotations

import subprocess
import sys

from groundup.cli import main


def test_calc_prints_course_figures(capsys):
    assert main(["calc", "llama-2-7b"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "512.00 KiB" in out
    assert main(["calc", "llama-2-70b", "--kv-heads", "64"]) == 0
    assert "2.50 MiB" in capsys.readouterr().out


def test_calc_reads_hf_folder(hf_folder, capsys):
    path, ref = hf_folder("mixtral")
    assert main(["calc", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{sum(p.numel() for p in ref.parameters()):,}" in out and "4 experts top-2" in out


def test_bad_preset_is_one_line_error(capsys):
    assert main(["calc", "gpt5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groundup calc: error: unknown preset 'gpt5'") and "Traceback" not in err


def test_presets_and_demo_via_entry_point():
    out = subprocess.run([sys.executable, "-m", "groundup", "presets"], capture_output=True, text=True, check=True)
    assert "mixtral-8x7b" in out.stdout and "46.70B" in out.stdout and "12.88B active" in out.stdout
    out = subprocess.run([sys.executable, "-m", "groundup", "demo", "--preset", "tiny-llama", "--seq-len", "16"],
                         capture_output=True, text=True, check=True)
    assert "logits (1, 16, 256)" in out.stdout


def test_quantize_writes_a_folder_that_loads_quantized(hf_folder, tmp_path, capsys):
    import shutil

    import groundup as gu
    from groundup.nn.qlinear import Int4Linear

    path = tmp_path / "gpt2"
    shutil.copytree(hf_folder("gpt2")[0], path)
    (path / "tokenizer.json").write_text("{}")
    out = tmp_path / "q4"
    assert main(["quantize", str(path), "--to", "int4", "--group", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 linear layers -> int4 (groups of 32)" in printed and "MiB ->" in printed
    model = gu.from_pretrained(out)
    assert isinstance(model.blocks[1].mlp.up_proj, Int4Linear) and model.quantization.group_size == 32
    assert (out / "tokenizer.json").is_file()
    assert main(["quantize", str(path), "--to", "int4", "--group", "128", "--out", str(tmp_path / "bad")]) == 2
    assert "group_size=128 does not divide its input width 32" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["quantize", str(path), "--to", "int8", "--out", str(path)]) == 2
    assert "is the source folder" in capsys.readouterr().err
