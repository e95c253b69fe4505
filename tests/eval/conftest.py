"""A tiny random Llama folder (transformers' layout, a groundup-trained tokenizer with <s> and </s>) and the
shipped tasks written out for lm-eval, shared by the evaluation tests."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_


@pytest.fixture(scope="session")
def lm_folder(tmp_path_factory):
    import transformers as T

    import groundup as gu
    from groundup.eval.tasks import TASKS_DIR

    texts = [" ".join(str(v) for v in json.loads(line).values())
             for f in sorted(TASKS_DIR.glob("*.jsonl")) for line in f.read_text().splitlines()]
    tok = gu.Tokenizer.train(texts, 400, bos_token="<s>", eos_token="</s>")
    cfg = T.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = randomize_(T.LlamaForCausalLM(cfg), 0)
    folder = tmp_path_factory.mktemp("lm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
    from groundup.eval import write_tasks

    out = tmp_path_factory.mktemp("tasks")
    write_tasks(out)
    return out
