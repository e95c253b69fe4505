"""The public surface: every subpackage a user reaches through ``gu.`` works without its own import, and
``import groundup`` stays light (no command-line module, no optional extra)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

SUBPACKAGES = ["calc", "checkpoint", "data", "generate", "models", "nn", "peft", "tokenizer", "train", "utils"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_are_attributes_in_a_fresh_interpreter(name):
    code = f"import groundup as gu, types; m = gu.{name}; assert isinstance(m, types.ModuleType), m; print(m.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"groundup.{name}"


def test_peft_through_gu():
    import groundup as gu

    model = gu.CausalLM(gu.Config.preset("tiny-llama"))
    gu.peft.apply_lora(model, r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    assert gu.peft.lora_layers(model)


def test_generate_is_both_the_function_and_the_package():
    import groundup as gu

    torch.manual_seed(0)
    model = gu.CausalLM(gu.Config.preset("tiny-llama")).eval()
    ids = torch.tensor([[1, 2, 3]])
    out = gu.generate(model, ids, 4)
    assert out.shape == (1, 7)
    assert torch.equal(out, gu.generate.generate(model, ids, 4))
    assert callable(gu.generate.stream)


def test_unknown_attribute_is_an_attribute_error():
    import groundup as gu

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gu.nope  # noqa: B018


def test_import_groundup_loads_no_cli_module():
    code = "import groundup, sys; print(sorted(m for m in sys.modules if m.startswith('groundup.cli')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
