"""MoE in the training loop (utilisation logged and plotted, losses added, the groundup layout saved and
resumed), sparse upcycling (exact at first, transformers reads the Mixtral result), calc's MoE figures."""

from __future__ import annotations

import json

import pytest
import torch
from test_pretrain_cli import TINY, corpus, run_cli  # noqa: F401  (the corpus fixture)

import groundup as gu
from groundup import calc
from groundup.cli import main
from groundup.models.upcycle import upcycle


def test_switch_pretraining_logs_expert_use_and_resumes(corpus, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o"
    args = ["--model", "tiny-switch", *TINY, "--n-layers", "2", "--tokenizer", str(corpus / "tok"), "--data",
            str(corpus / "*.txt"), "--steps", "4", "--eval-every", "2", "--out", str(out)]
    code, cap = run_cli(args, capsys)
    assert code == 0, cap.err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4 and all(0.0 <= r["moe_dropped"] < 1.0 for r in steps)
    shares = steps[-1]["moe_share"]
    assert len(shares) == 1 and len(shares[0]) == 8 and sum(shares[0]) == pytest.approx(1.0, abs=1e-3)
    assert (out / "experts.png").stat().st_size > 1000
    model = gu.from_pretrained(out / "checkpoint")
    assert model.config.moe.router == "switch" and model.config.family == "groundup"
    code, cap = run_cli(["--out", str(out), "--resume", "--steps", "5", "--quiet"], capsys)
    assert code == 0, cap.err


def test_a_config_no_layout_holds_fails_before_training(corpus, tmp_path, capsys):  # noqa: F811
    cfg = gu.Config.preset("tiny-switch", family="llama")
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    code, cap = run_cli(["--model", str(tmp_path / "c.json"), *TINY, "--n-layers", "2", "--tokenizer",
                         str(corpus / "tok"), "--data", str(corpus / "*.txt"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "family='groundup'" in cap.err
    assert not (tmp_path / "o" / "checkpoint").exists()


def test_upcycled_model_starts_equal_to_the_dense_one_and_trains_apart():
    torch.manual_seed(0)
    dense = gu.CausalLM(gu.Config.preset("tiny-llama")).eval()
    sparse = upcycle(dense, 4, 2, family="mixtral").eval()
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(sparse(ids), dense(ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(sparse.blocks[0].mlp.experts[3].down_proj.weight, dense.blocks[0].mlp.down_proj.weight)
    every = upcycle(dense, 4, 1, router="switch", moe_layers=[1])
    assert [type(b.mlp).__name__ for b in every.blocks] == ["GatedMLP", "MoE"]
    with pytest.raises(ValueError, match="already has n_experts"):
        upcycle(sparse, 4)


def test_upcycle_cli_writes_a_mixtral_folder_transformers_reads(hf_folder, tmp_path, capsys):
    import transformers as T

    path, ref = hf_folder("llama")
    assert main(["upcycle", str(path), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2"]) == 0
    assert "mixtral" in capsys.readouterr().out
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()
    ids = torch.randint(3, 90, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=1e-4, rtol=0)
    assert main(["upcycle", str(path), str(tmp_path / "sw"), "--router", "switch", "--top-k", "1",
                 "--capacity-factor", "1.25", "--every", "2"]) == 0
    assert gu.from_pretrained(tmp_path / "sw").config.moe.moe_layers == [1]


def test_calc_moe_presets_total_active_and_capacity():
    # published sizes: Qwen1.5-MoE-A2.7B 14.3B / 2.7B active, OLMoE-1B-7B 6.9B / 1.3B, Switch-Base-8 ~620M
    for name, total, active in (("qwen1.5-moe-a2.7b", 14.3e9, 2.7e9), ("olmoe-1b-7b", 6.9e9, 1.3e9),
                                ("qwen3-30b-a3b", 30.5e9, 3.3e9)):
        b = calc.param_breakdown(gu.Config.preset(name))
        assert b["total"] == pytest.approx(total, rel=0.01) and b["active"] == pytest.approx(active, rel=0.03)
    switch = gu.Config.preset("switch-base-8")
    assert calc.param_count(switch) == pytest.approx(619e6, rel=0.01)
    for name in ("qwen1.5-moe-a2.7b", "tiny-switch", "switch-base-8"):  # the formula against a built model
        cfg = gu.Config.preset(name)
        model = gu.models.meta_model(cfg)
        assert model.num_params() == calc.param_count(cfg), name
        assert model.num_params(active=True) == calc.active_param_count(cfg), name
    text = calc.report(gu.Config.preset("tiny-switch"), batch=2, seq_len=64)
    assert "expert capacity (batch of 128 tokens), training" in text and " 20 " in text  # ceil(128 x 1.25 / 8)
    assert "expert capacity, eval" in text and " 32 " in text
