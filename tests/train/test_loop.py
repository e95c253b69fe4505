"""The training loop: it learns, resumes exactly, stops on a non-finite loss, writes atomically."""

from __future__ import annotations

import json
import math

import pytest
import torch

import groundup as gu
from groundup.data import Mixture, Source
from groundup.models import build_model
from groundup.train import TrainArgs, TrainingError, lr_at, param_groups, train

TEXT = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat and sat. " * 3).split(". ")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    (root / "docs").mkdir()
    for i in range(30):
        (root / "docs" / f"{i:02d}.txt").write_text(TEXT[i % len(TEXT)] * (2 + i % 3) + ".\n", encoding="utf-8")
    tok = gu.Tokenizer.train([" ".join(TEXT)], 300, special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    return root, tok


def make(root, tok, dropout=0.1):
    torch.manual_seed(0)
    cfg = gu.Config.preset("tiny-llama").replace(vocab_size=tok.vocab_size, dropout=dropout, max_seq_len=64)
    model = gu.CausalLM(cfg)
    mix = Mixture([Source(str(root / "docs" / "*.txt"), name="docs")], tok, 16, cache_dir=root / "cache",
                  val_fraction=0.2, seed=1)
    return model, mix


def killed_at(monkeypatch, step: int, accum: int = 1):
    """Make the next run die (like a kill) when it starts optimizer step `step` (1-based)."""
    from groundup.train import loop

    calls, real = {"n": 0}, loop.lm_loss

    def lm_loss(*a):
        calls["n"] += 1
        if calls["n"] > (step - 1) * accum:
            raise KeyboardInterrupt("killed")
        return real(*a)

    monkeypatch.setattr(loop, "lm_loss", lm_loss)


def losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_it_learns_and_leaves_a_loadable_folder(setup, tmp_path):
    root, tok = setup
    model, mix = make(root, tok)
    args = TrainArgs(out_dir=str(tmp_path / "run"), steps=30, batch_size=8, micro_batch=4, lr=1e-2, warmup=3,
                     eval_every=10, save_every=30, progress=False)
    summary = train(model, mix, args, tokenizer=tok, log=lambda *_: None)
    assert summary["val_ppl"] < 0.5 * summary["val_ppl_start"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    loaded = gu.from_pretrained(tmp_path / "run" / "checkpoint")
    x = torch.randint(0, tok.vocab_size, (1, 10))
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert gu.Tokenizer.from_pretrained(tmp_path / "run" / "checkpoint").get_vocab() == tok.get_vocab()
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint").eval()
    torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=0)


def test_resume_continues_exactly(setup, tmp_path, monkeypatch):
    root, tok = setup
    common = dict(batch_size=8, micro_batch=4, lr=5e-3, warmup=2, eval_every=3, save_every=3, progress=False)
    model, mix = make(root, tok)
    train(model, mix, TrainArgs(out_dir=str(tmp_path / "a"), steps=6, **common), log=lambda *_: None)
    model, mix = make(root, tok)
    with monkeypatch.context() as m:
        killed_at(m, 5, accum=2)  # dies during step 5; the last checkpoint is step 3's
        with pytest.raises(KeyboardInterrupt):
            train(model, mix, TrainArgs(out_dir=str(tmp_path / "b"), steps=6, **common), log=lambda *_: None)
    model, mix = make(root, tok)  # fresh objects, as after a restart; the checkpoint brings the state back
    train(model, mix, TrainArgs(out_dir=str(tmp_path / "b"), steps=6, **common), resume=True, log=lambda *_: None)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # bit-identical on CPU


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(setup, tmp_path, monkeypatch):
    root, tok = setup
    model, mix = make(root, tok)
    from groundup.train import loop

    calls, real = {"n": 0}, loop.lm_loss

    def blows_up_at_step_5(*a):
        calls["n"] += 1
        loss = real(*a)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(loop, "lm_loss", blows_up_at_step_5)
    args = TrainArgs(out_dir=str(tmp_path / "r"), steps=8, batch_size=4, eval_every=2, save_every=2, progress=False)
    with pytest.raises(TrainingError, match=r"step 5: the loss is nan .*checkpoint is kept"):
        train(model, mix, args, log=lambda *_: None)
    state = json.loads((tmp_path / "r" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the weights were not touched


def test_a_crash_while_saving_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    root, tok = setup
    model, mix = make(root, tok)
    args = TrainArgs(out_dir=str(tmp_path / "r"), steps=2, batch_size=4, eval_every=2, save_every=2, progress=False)
    train(model, mix, args, log=lambda *_: None)
    from groundup.train import checkpoint as ck

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ck, "save_file", crash)  # dies after the model files, before the optimizer state
    with pytest.raises(KeyboardInterrupt):
        train(model, mix, TrainArgs(out_dir=str(tmp_path / "r"), steps=4, batch_size=4, eval_every=2,
                                    save_every=2, progress=False), resume=True, log=lambda *_: None)
    state = json.loads((tmp_path / "r" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")) == []
    gu.from_pretrained(tmp_path / "r" / "checkpoint")


def test_schedule_and_weight_decay_groups():
    assert lr_at(0, lr=1.0, warmup=4, max_steps=10) == 0.25
    assert lr_at(3, lr=1.0, warmup=4, max_steps=10) == 1.0
    assert math.isclose(lr_at(7, lr=1.0, warmup=4, max_steps=10, min_lr=0.1), 0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert lr_at(10, lr=1.0, warmup=4, max_steps=10, min_lr=0.1) == 0.1
    model = gu.CausalLM(gu.Config.preset("tiny-gpt2"))
    decay, keep = param_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and any(p is model.embed.weight for p in keep["params"])
    assert not any(p is model.embed.weight for p in decay["params"])  # embeddings (tied head too) not decayed
    assert any(p.dim() == 1 for p in keep["params"]) and keep["weight_decay"] == 0.0


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-t5"])
def test_activation_checkpointing_gives_the_same_gradients(preset):
    cfg = gu.Config.preset(preset).replace(dropout=0.1)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))

    def grads(on: bool):
        model.set_activation_checkpointing(on)
        model.zero_grad()
        torch.manual_seed(1)  # same dropout masks in both runs (checkpointing replays the RNG)
        out = model(ids) if cfg.arch == "causal_lm" else model(ids, decoder_input_ids=ids)
        out.float().pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, recomputed = grads(False), grads(True)
    assert len(plain) == len(recomputed) > 0
    for a, b in zip(plain, recomputed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-t5"])
def test_encoder_mlm_and_seq2seq_span_corruption_train_and_resume(setup, tmp_path, preset, monkeypatch):
    root, _ = setup
    specials = ["<|endoftext|>", "[MASK]", *(f"<extra_id_{i}>" for i in range(8))]
    tok = gu.Tokenizer.train([" ".join(TEXT)], 320, special_tokens=specials, eos_token="<|endoftext|>")

    def make_model():
        torch.manual_seed(0)
        cfg = gu.Config.preset(preset).replace(vocab_size=tok.vocab_size, max_seq_len=64)
        mix = Mixture([Source(str(root / "docs" / "*.txt"), name="docs")], tok, 16, cache_dir=tmp_path / "cache",
                      val_fraction=0.2, seed=1)
        return build_model(cfg), mix

    common = dict(batch_size=8, lr=5e-3, warmup=2, eval_every=4, save_every=4, progress=False)
    model, mix = make_model()
    summary = train(model, mix, TrainArgs(out_dir=str(tmp_path / "a"), steps=8, **common), tokenizer=tok,
                    log=lambda *_: None)
    assert summary["val_loss"] < summary["val_loss_start"]
    model, mix = make_model()
    with monkeypatch.context() as m:
        killed_at(m, 6)  # dies during step 6; the last checkpoint is step 4's
        with pytest.raises(KeyboardInterrupt):
            train(model, mix, TrainArgs(out_dir=str(tmp_path / "b"), steps=8, **common), tokenizer=tok,
                  log=lambda *_: None)
    model, mix = make_model()
    train(model, mix, TrainArgs(out_dir=str(tmp_path / "b"), steps=8, **common), tokenizer=tok, resume=True,
          log=lambda *_: None)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [a[s] for s in range(1, 9)] == [b[s] for s in range(1, 9)]  # masks and spans replay exactly


def test_objectives_need_their_special_tokens(setup, tmp_path):
    root, tok = setup  # no [MASK], no sentinels
    cfg = gu.Config.preset("tiny-bert").replace(vocab_size=tok.vocab_size, max_seq_len=64)
    mix = Mixture([Source(str(root / "docs" / "*.txt"), name="docs")], tok, 16, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"masked-LM objective needs a \[MASK\] token"):
        train(build_model(cfg), mix, TrainArgs(out_dir=str(tmp_path / "o"), steps=2, batch_size=4, progress=False),
              tokenizer=tok, log=lambda *_: None)
