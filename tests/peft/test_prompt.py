"""Prompt tuning: virtual token ids after the vocabulary; the same logits as peft's prompt tuning in both
directions; one mixed batch of tasks equals each task run alone; text initialisation and interpret()."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB
from conftest import tiny_llama as _tiny

import groundup as gu
from groundup.peft import AdapterError, apply_prompt_tuning, load_adapter, save_adapter, soft_prompt

IDS = [5, 9, 14, 3, 22, 7, 11, 30]




def test_only_the_prompt_trains_and_the_model_is_unchanged_without_it():
    model = _tiny()
    with torch.no_grad():  # frozen weights may take another attention kernel than trainable ones: compare alike
        want = model(torch.tensor([IDS]))
    apply_prompt_tuning(model, 4)
    soft = soft_prompt(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["embed.prompt_embeddings"]
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([IDS])), want)  # no virtual ids: the base model
    with_prompt = model(torch.tensor([soft.prompt_ids() + IDS]))
    assert with_prompt.shape[1] == 4 + len(IDS)
    loss = model(torch.tensor([soft.prompt_ids() + IDS[:-1]]), targets=torch.tensor([[-100] * 4 + IDS[1:]]))
    loss.backward()
    assert soft.prompt_embeddings.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=rf"token id {VOCAB + 4}, outside the vocabulary \[0, {VOCAB + 4}\)"):
        model(torch.tensor([[VOCAB + 4]]))


def test_generation_with_a_soft_prompt_equals_the_uncached_reference():
    from groundup.generate import generate_uncached

    model = apply_prompt_tuning(_tiny(), 3)
    with torch.no_grad():
        soft_prompt(model).prompt_embeddings.normal_(0, 1.0)
    prompt = soft_prompt(model).prompt_ids() + IDS
    out = gu.generate(model, [prompt, prompt[:5]], 6)
    assert torch.equal(out[0], generate_uncached(model, torch.tensor([prompt]), 6)[0])


def test_peft_parity_both_ways(hf_folder, tmp_path):
    import peft

    path, ref = hf_folder("llama")
    ours = apply_prompt_tuning(gu.from_pretrained(path), 5)
    with torch.no_grad():
        soft_prompt(ours).prompt_embeddings.normal_(0, 0.5)
    save_adapter(ours, tmp_path / "ours")
    ids = torch.tensor([IDS])
    pm = peft.PeftModel.from_pretrained(ref, tmp_path / "ours").eval()
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits  # [1, 5 + T, V]: peft puts the virtual tokens first
    # (prompt learning wraps the model without changing its layers: the shared reference stays as it was)
    mine = ours(torch.tensor([soft_prompt(ours).prompt_ids() + IDS]))
    torch.testing.assert_close(mine[:, 5:], theirs[:, 5:], atol=1e-4, rtol=1e-4)

    pm = peft.get_peft_model(ref, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
        theirs = pm(input_ids=ids).logits
    pm.save_pretrained(tmp_path / "theirs")
    loaded = load_adapter(gu.from_pretrained(path), tmp_path / "theirs")
    mine = loaded(torch.tensor([soft_prompt(loaded).prompt_ids() + IDS]))
    torch.testing.assert_close(mine[:, 3:], theirs[:, 3:], atol=1e-4, rtol=1e-4)
    with pytest.raises(AdapterError, match="different base model"):
        load_adapter(gu.CausalLM(loaded.config.replace(d_model=48, head_dim=None)), tmp_path / "theirs")


def test_a_mixed_batch_of_tasks_equals_each_task_alone():
    """Multi-task serving: three rows, each with its own task's soft prompt, in one forward."""
    model = apply_prompt_tuning(_tiny(), 4, tasks=3)
    soft = soft_prompt(model)
    with torch.no_grad():
        soft.prompt_embeddings.normal_(0, 1.0)
    rows = [soft.prompt_ids(t) + IDS for t in (2, 0, 1)]
    batch = model(torch.tensor(rows))
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch[i], model(torch.tensor([row]))[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)  # the tasks differ
    out = gu.generate(model, rows, 5)  # and generation takes them like any tokens
    for i, row in enumerate(rows):
        assert torch.equal(out[i], gu.generate(model, [row], 5)[0])


def test_text_initialisation_and_interpret():
    model = _tiny()
    apply_prompt_tuning(model, 4, init_ids=[7, 8])
    soft = soft_prompt(model)
    assert torch.equal(soft.prompt_embeddings[2], model.embed.base.weight[7])
    nearest = soft.interpret(k=3)
    assert [row[0][0] for row in nearest] == [7, 8, 7, 8]  # each virtual token's nearest word is its init
    assert abs(nearest[0][0][1] - 1.0) < 1e-5
