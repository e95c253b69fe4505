"""Properties of the alignment pieces that need no reference library: the LoRA-off reference, label
smoothing, SimPO's formula, the adaptive KL controller, where the reward model reads."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groundup.align import losses
from tests.conftest import tiny_llama


def test_adapters_disabled_is_the_base_exactly_and_restores():
    from groundup import peft

    base = tiny_llama(seed=3)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        want = base(ids)
    peft.apply_lora(base, r=4, target_modules=["q_proj", "v_proj"])
    for layer in peft.lora_layers(base).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)  # a trained adapter: the outputs move
    with torch.no_grad():
        tuned = base(ids)
        with peft.adapters_disabled(base):
            off = base(ids)
        again = base(ids)
    assert not torch.allclose(tuned, want, atol=1e-3)
    torch.testing.assert_close(off, want, atol=0, rtol=0)
    torch.testing.assert_close(again, tuned, atol=0, rtol=0)
    peft.merge_lora(base)
    with pytest.raises(ValueError, match="merged"), peft.adapters_disabled(base):
        pass


@settings(max_examples=50, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(0.01, 2), st.floats(0, 0.49))
def test_conservative_dpo_is_symmetric_in_the_flip(c, r, beta, eps):
    """Smoothing e on (chosen, rejected) is smoothing 1 - e on the swapped pair; e = 0 is plain DPO."""
    t = lambda x: torch.tensor([x])
    z = t(0.0)
    a, _, _ = losses.dpo_loss(t(c), t(r), z, z, beta=beta, label_smoothing=eps)
    b, _, _ = losses.dpo_loss(t(r), t(c), z, z, beta=beta, label_smoothing=1 - eps)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    plain, _, _ = losses.dpo_loss(t(c), t(r), z, z, beta=beta)
    assert plain.item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * (c - r)))), abs=1e-5)


def test_simpo_is_the_papers_formula():
    c, r = torch.tensor([-0.5, -1.0]), torch.tensor([-1.5, -0.8])
    loss, rc, _ = losses.simpo_loss(c, r, beta=2.0, gamma=0.5)
    want = sum(-math.log(1 / (1 + math.exp(-(2.0 * (a - b) - 0.5)))) for a, b in zip(c.tolist(), r.tolist(),
                                                                                        strict=True)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)
    torch.testing.assert_close(rc, 2.0 * c)


def test_adaptive_kl_moves_toward_its_target():
    kl = losses.AdaptiveKL(0.1, target=6.0, horizon=100)
    kl.update(12.0, 10)  # too far from the reference: the penalty grows (by at most 20% x n / horizon)
    assert kl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    kl.update(3.0, 10)
    assert kl.value < 0.1 * (1 + 0.2 * 10 / 100)
    fixed = losses.AdaptiveKL(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


def test_reward_model_reads_the_last_token_that_is_not_padding():
    from groundup.align import RewardModel

    model = tiny_llama(seed=1, pad_token_id=0)
    rm = RewardModel(model)
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9], [5, 6, 7, 8, 0]])
    real = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]).bool()
    # row 0: its last real token is the pad id (an end-of-text that is also pad): read the token before it
    assert rm.pool_index(ids, real).tolist() == [2, 4, 3]
    with torch.no_grad():
        r = rm(ids, real)
        alone = rm(ids[:1, :3], real[:1, :3])
    assert r[0].item() == pytest.approx(alone.item(), abs=1e-5)  # padding after the read token changes nothing
