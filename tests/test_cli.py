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
