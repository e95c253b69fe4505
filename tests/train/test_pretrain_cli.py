"""`groundup pretrain` / `python -m groundup.train`: bad input fails before training; a tiny run works;
two torchrun processes give the single-process result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import groundup as gu
from groundup.cli import main

TINY = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-ff", "64", "--block-size", "16",
        "--batch-size", "4", "--quiet", "--sample-tokens", "4", "--eval-batches", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    for i in range(24):
        text = " ".join(words[(i + k) % 8] for k in range(40 + i))
        (root / f"{i:02d}.txt").write_text(text + "\n", encoding="utf-8")
    (root / "rows.jsonl").write_text('{"text": "alpha beta"}\n{"content": "no text"}\n', encoding="utf-8")
    tok = gu.Tokenizer.train(root.glob("*.txt"), 300, special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    tok.save_pretrained(root / "tok")
    tok = gu.Tokenizer.train(root.glob("*.txt"), 300, special_tokens=["<|endoftext|>", "[MASK]"],
                             eos_token="<|endoftext|>")
    tok.save_pretrained(root / "tok_mlm")
    return root


def run_cli(args, capsys):
    code = main(["pretrain", *args])
    return code, capsys.readouterr()


def test_bad_input_fails_before_training(corpus, tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        (["--data", str(corpus / "none*.txt")], "no file matches"),
        (["--data", str(corpus / "rows.jsonl")], r"rows.jsonl:2: no 'text' field"),
        (["--data", str(corpus / "*.txt"), "--block-size", "4096"], "above the model's max_seq_len"),
        (["--data", f"{corpus / '*.txt'}=heavy"], "must be a number"),
    ]
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    cases.append((["--data", str(tmp_path / "empty.txt")], "has no text"))
    for extra, message in cases:
        args = [*TINY, "--tokenizer", str(corpus / "tok"), "--out", str(out), *extra]
        code, cap = run_cli(args, capsys)
        assert code == 2, extra
        assert re.search(message, cap.err), (extra, cap.err)
        assert not (out / "checkpoint").exists()


def test_yaml_config_and_a_tiny_run(corpus, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: ['{corpus / '*.txt'}']\nsteps: 6\nlr: 0.01\nwarmup: 2\neval_every: 3\n", encoding="utf-8")
    code, cap = run_cli(["--config", str(cfg), *TINY, "--tokenizer", str(corpus / "tok"), "--out",
                         str(tmp_path / "o")], capsys)
    assert code == 0, cap.err
    assert "validation ppl" in cap.out and "sample" in cap.out
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 6
    # --resume picks up the run's own settings (data, model, schedule) from <out>/settings.json
    code, cap = run_cli(["--out", str(tmp_path / "o"), "--resume", "--steps", "8", "--quiet"], capsys)
    assert code == 0, cap.err
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    (tmp_path / "bad.yaml").write_text("stepz: 3\n", encoding="utf-8")
    code, cap = run_cli(["--config", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "unknown settings ['stepz']" in cap.err


def _torchrun(args, out, env, nproc=2):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "groundup.train", *args, "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)


def _losses(folder):
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("model,extra", [("tiny-llama", []), ("tiny-bert", []), ("tiny-llama", ["--fsdp"])],
                         ids=["llama-ddp", "bert-ddp", "llama-fsdp"])
def test_torchrun_two_processes_equal_one(corpus, tmp_path, model, extra):
    """DDP (or FSDP) with 2 gloo processes and the same global batch: the same losses and weights as 1
    process (for masked LM too: each row's mask depends on its place in the global batch, not on the rank)."""
    tok = corpus / ("tok_mlm" if model == "tiny-bert" else "tok")
    common = [*TINY, "--model", model, "--data", str(corpus / "*.txt"), "--tokenizer", str(tok), "--steps", "4",
              "--eval-every", "2", "--save-every", "2", "--sample-tokens", "0", "--lr", "0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "groundup.train", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = _torchrun([*common, *extra], tmp_path / "two", env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("validation ppl") == 1  # only rank 0 reports
    assert ("fsdp: 2 units sharded over 2 processes" in two.stdout) == bool(extra)
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
    a = gu.from_pretrained(tmp_path / "one" / "checkpoint").state_dict()
    b = gu.from_pretrained(tmp_path / "two" / "checkpoint").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    leftovers = [p.name for p in (tmp_path / "two").iterdir()]
    assert sorted(leftovers) == ["checkpoint", "loss.png", "metrics.jsonl", "settings.json", "token_cache"]
    if extra:
        # The sharded AdamW moments were gathered whole; resuming re-shards them: steps 5-6 match again.
        from safetensors.torch import load_file

        ma, mb = (load_file(str(tmp_path / d / "checkpoint" / "optimizer.safetensors")) for d in ("one", "two"))
        assert ma.keys() == mb.keys()
        for k in ma:
            torch.testing.assert_close(ma[k], mb[k], atol=1e-5, rtol=1e-4)
        one = subprocess.run([sys.executable, "-m", "groundup.train", "--out", str(tmp_path / "one"), "--resume",
                              "--steps", "6"], capture_output=True, text=True, env=env, timeout=300)
        assert one.returncode == 0, one.stderr
        two = _torchrun(["--resume", "--steps", "6"], tmp_path / "two", env)
        assert two.returncode == 0, two.stderr[-3000:]
        assert len(_losses(tmp_path / "two")) == 6
        assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
