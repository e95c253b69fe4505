"""`groundup align` and `groundup reward` end to end on tiny models: a preference that is known (answers
with "yes" are preferred), folders that transformers and peft load, exact resume, and bad input refused
before any work or survived without corrupting anything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.align.align_util import align_folders  # noqa: F401

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def prefs(tmp_path, n: int = 40, name: str = "prefs.jsonl"):
    """Pairs and rankings whose truth is a rule: an answer saying "yes" beats one saying "no"."""
    rows = []
    for i in range(n):
        p = f"{WORDS[i % 10]} {WORDS[(3 * i) % 10]}"
        if i % 4 == 3:
            rows.append({"prompt": p, "completions": [f"no {WORDS[i % 10]}", f"yes {WORDS[i % 7]}", "no no"],
                         "ranking": [1, 0, 2]})
        else:
            rows.append({"prompt": p, "chosen": f"yes {WORDS[i % 7]}", "rejected": f"no {WORDS[i % 5]}"})
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def align(*args):
    """Run `groundup align ARGS` in this process (the CLI's own parser), returning the run's summary."""
    from groundup.align.run import AlignSettings, run
    from groundup.cli import build_parser
    from groundup.utils.settings import merge

    model = args[args.index("--model") + 1]
    rest = [a for i, a in enumerate(args) if a != "--model" and (i == 0 or args[i - 1] != "--model")]
    ns = build_parser().parse_args(["align", model, "--quiet", *rest])
    if ns.save_every is None:
        ns.save_every = 1000
    return run(merge(AlignSettings, given=vars(ns)), log=lambda *_: None)


@pytest.fixture(scope="module")
def reward_run(align_folders, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    data = prefs(tmp)
    summary = align("--model", str(align_folders["policy"]), "--method", "rm", "--data", str(data), "--steps", "40",
                    "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--out", str(tmp / "rm"),
                    "--val-fraction", "0.2", "--eval-every", "20")
    return summary, data, tmp


def test_reward_model_learns_the_rule_and_transformers_reads_it(reward_run):
    import transformers as T

    from groundup.align.run import score_file

    summary, data, tmp = reward_run
    assert summary["held_out_accuracy"] >= 0.9
    folder = tmp / "rm" / "reward_model"
    hf = T.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    assert hf.config.num_labels == 1
    scored = score_file(str(folder), [str(data)])
    assert scored["accuracy"] >= 0.9
    from groundup.data.preference import load_preferences
    from groundup.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(folder)
    g = load_preferences([data], tok)[0][0]
    ids = torch.tensor([g.prompt + g.completions[0]])
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits[0, 0].item()
    assert theirs == pytest.approx(scored["scores"][0]["rewards"][0], abs=1e-4)


def test_dpo_with_lora_prefers_the_rule_and_writes_a_peft_adapter(align_folders, tmp_path):
    import peft as hf_peft
    import transformers as T

    data = prefs(tmp_path)
    summary = align("--model", str(align_folders["policy"]), "--method", "dpo", "--data", str(data), "--lora",
                    "--steps", "30", "--batch-size", "8", "--lr", "1e-2", "--warmup", "2", "--beta", "0.5",
                    "--val-fraction", "0.2", "--eval-every", "30", "--out", str(tmp_path / "dpo"), "--merge")
    rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_accuracy" in r]
    assert val[-1]["val_accuracy"] == 1.0 and val[-1]["val_margin"] > val[0]["val_margin"] + 0.5
    assert (tmp_path / "dpo" / "align.png").stat().st_size > 1000
    base = T.AutoModelForCausalLM.from_pretrained(align_folders["policy"], dtype=torch.float32)
    model = hf_peft.PeftModel.from_pretrained(base, summary["adapter"]).eval()
    merged = T.AutoModelForCausalLM.from_pretrained(summary["merged"], dtype=torch.float32).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, merged(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["ipo", "kto", "orpo", "simpo"])
def test_other_direct_methods_run_and_move_toward_the_rule(align_folders, tmp_path, method):
    data = prefs(tmp_path)
    align("--model", str(align_folders["policy"]), "--method", method, "--data", str(data), "--steps", "12",
          "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--val-fraction", "0.2", "--eval-every", "12",
          "--out", str(tmp_path / method))
    rows = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert (tmp_path / method / "model" / "config.json").is_file()


def test_resume_continues_exactly(align_folders, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from groundup.train import loop

    data = prefs(tmp_path)
    common = ("--model", str(align_folders["policy"]), "--method", "dpo", "--data", str(data), "--lora",
              "--batch-size", "4", "--lr", "5e-3", "--warmup", "1", "--eval-every", "100")
    align(*common, "--steps", "6", "--out", str(tmp_path / "a"))
    calls, real = {"n": 0}, loop.lm_loss

    def killed_at_step_4(*a):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real(*a)

    monkeypatch.setattr(loop, "lm_loss", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        align(*common, "--steps", "6", "--save-every", "3", "--out", str(tmp_path / "b"))
    monkeypatch.setattr(loop, "lm_loss", real)
    align(*common, "--steps", "6", "--resume", "--out", str(tmp_path / "b"))
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def prompts(tmp_path, n: int = 16):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{WORDS[i % 10]} {WORDS[(7 * i) % 10]}", "answer": "yes"}) + "\n"
                            for i in range(n)))
    return path


def test_ppo_with_lora_runs_logs_and_keeps_one_copy(reward_run, align_folders, tmp_path):
    _, _, rm_tmp = reward_run
    summary = align("--model", str(align_folders["policy"]), "--method", "ppo", "--data", str(prompts(tmp_path)),
                    "--reward-model", str(rm_tmp / "rm" / "reward_model"), "--lora", "--steps", "4", "--batch-size",
                    "4", "--epochs", "2", "--max-new-tokens", "6", "--lr", "1e-3", "--out", str(tmp_path / "ppo"))
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4 and "val_loss" not in json.dumps(rows)
    for key in ("score", "kl", "pg_loss", "vf_loss", "clipfrac", "entropy", "approxkl"):
        assert key in steps[0] or key in steps[2], key
    assert all(r["kl"] == 0.0 for r in steps[:1])  # the first rollout's policy is the reference exactly
    assert (tmp_path / "ppo" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "ppo" / "checkpoint" / "value.safetensors").is_file()
    assert summary["trainable"] < summary["total"] / 10


def test_grpo_skips_a_rollout_whose_reward_fails(align_folders, tmp_path):
    rewards = tmp_path / "rewards.py"
    rewards.write_text("CALLS = [0]\n"
                       "def flaky(prompt, completion, record):\n"
                       "    CALLS[0] += 1\n"
                       "    if CALLS[0] == 3:\n"
                       "        raise RuntimeError('scorer down')\n"
                       "    if CALLS[0] == 20:\n"
                       "        return float('nan')\n"
                       "    return float('yes' in completion)\n")
    with pytest.warns(UserWarning) as caught:
        align("--model", str(align_folders["policy"]), "--method", "grpo", "--data", str(prompts(tmp_path)),
              "--reward", f"{rewards}:flaky", "--steps", "4", "--batch-size", "2", "--group", "4",
              "--max-new-tokens", "5", "--lr", "1e-3", "--out", str(tmp_path / "grpo"))
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert any("flaky raised RuntimeError: scorer down" in m for m in messages)
    assert any("flaky returned nan" in m for m in messages)
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 4 and rows[-1]["skipped_rollouts"] == 2
    import groundup as gu
    from groundup import peft  # noqa: F401

    model = gu.from_pretrained(tmp_path / "grpo" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "ppo"], "--method ppo needs --reward-model"),
    (["--method", "grpo"], "--method grpo needs --reward"),
    (["--method", "dpo", "--merge"], "--merge goes with --lora"),
    (["--method", "dpo", "--reward", "goat_exact"], "--reward goes with --method grpo"),
    (["--method", "grpo", "--reward", "nosuch"], "--reward 'nosuch': give a built-in"),
])
def test_cli_refuses_bad_settings_in_one_line(align_folders, tmp_path, capsys, extra, message):
    from groundup.cli import main

    data = prefs(tmp_path)
    code = main(["align", str(align_folders["policy"]), "--data", str(data), "--out", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_cli_names_the_bad_line(align_folders, tmp_path):
    data = prefs(tmp_path)
    with open(data, "a") as f:
        f.write('{"prompt": "x", "chosen": "yes", "rejected": "no", "ranking": [0]}\n')
    out = subprocess.run([sys.executable, "-m", "groundup", "reward", "train", str(align_folders["policy"]), "--data",
                          str(data), "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"{data}:41: a pair does not take field(s) ['ranking']" in out.stderr


def test_ppo_full_weights_with_a_separate_value_model_resumes(reward_run, align_folders, tmp_path):
    """trl 1.12's layout: a trained policy, a frozen reference copy and a value model copied from the reward
    model; its checkpoint (policy folder + value model tensors, tied head written once) resumes."""
    _, _, rm_tmp = reward_run
    common = ("--model", str(align_folders["policy"]), "--method", "ppo", "--data", str(prompts(tmp_path)),
              "--reward-model", str(rm_tmp / "rm" / "reward_model"), "--value-model", "separate", "--batch-size",
              "2", "--epochs", "1", "--max-new-tokens", "4", "--lr", "1e-3", "--warmup", "1", "--out",
              str(tmp_path / "ppo"))
    align(*common, "--steps", "2", "--save-every", "2")
    summary = align(*common, "--steps", "3", "--resume")
    assert summary["steps"] == 3 and (tmp_path / "ppo" / "model" / "config.json").is_file()
    import groundup as gu

    policy = sum(p.numel() for p in gu.from_pretrained(align_folders["policy"]).parameters())
    assert summary["trainable"] > 1.5 * policy  # the policy and the value model (a trunk with a tied head) train


def test_dpo_over_a_4_bit_base(align_folders, tmp_path):
    """--qlora: the reference log-probs come from the NF4 base, the LoRA adapter trains over it."""
    summary = align("--model", str(align_folders["policy"]), "--method", "dpo", "--data", str(prefs(tmp_path, 12)),
                    "--qlora", "--steps", "2", "--batch-size", "4", "--lr", "1e-3", "--warmup", "1",
                    "--out", str(tmp_path / "q"))
    assert (tmp_path / "q" / "adapter" / "adapter_config.json").is_file()
    assert summary["trainable"] < summary["total"] / 5
