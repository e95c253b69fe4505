"""Speculative decoding: greedy output identical to the target's own greedy output, sampled tokens
distributed as the target's (exact distributions enumerated), and the draft checks."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from groundup.generate import SpeculativeStats

PROMPTS = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]


def _random(cfg: gu.Config, seed: int, std: float = 0.3) -> gu.CausalLM:
    """Weights large enough that greedy output wanders over many tokens (a default init repeats one)."""
    model = gu.CausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _near(model: gu.CausalLM, eps: float, seed: int = 9) -> gu.CausalLM:
    """A copy with every weight nudged: a draft that agrees with the target often, not always."""
    g = torch.Generator().manual_seed(seed)
    copy = gu.CausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * eps)
    return copy.eval()


CONFIGS = {
    "llama-gqa": dict(pos="rope", n_kv_heads=2),
    "gpt2-like": dict(pos="learned", norm="layernorm", ffn="gelu", tie_embeddings=False),
    "window": dict(pos="rope", sliding_window=4),
    "moe": dict(pos="rope", n_experts=4, top_k=2),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_equals_the_targets_greedy(name, k):
    """Per row of an uneven batch and alone; with a nudged copy (some guesses kept, some rejected) and an
    unrelated smaller draft."""
    cfg = gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64, **CONFIGS[name])
    target = _random(cfg, 0)
    want = gu.generate(target, PROMPTS, 24)
    assert len(set(want[0, 7:].tolist())) > 3  # a varied continuation, not one token repeated
    small = _random(cfg.replace(n_layers=1, d_model=16, d_ff=24), 1)
    for draft in (_near(target, 0.1), small):
        stats = SpeculativeStats()
        got = gu.generate(target, PROMPTS, 24, draft_model=draft, num_draft_tokens=k, stats=stats)
        assert torch.equal(got, want), (name, k)
        doubtful = gu.generate(target, PROMPTS, 24, draft_model=draft, num_draft_tokens=k, draft_confidence=0.5)
        assert torch.equal(doubtful, want), (name, k)
        assert stats.tokens == 24 and stats.rounds <= 24
        assert stats.accepted <= stats.drafted
        for b, prompt in enumerate(PROMPTS):
            alone = gu.generate(target, [prompt], 24, draft_model=draft, num_draft_tokens=k)
            assert torch.equal(alone[0], want[b, 7 - len(prompt):]), (name, k, b)
    near = SpeculativeStats()
    gu.generate(target, [PROMPTS[0]], 24, draft_model=_near(target, 0.1), num_draft_tokens=k, stats=near)
    assert 0 < near.accepted < near.drafted  # both the keep and the reject path ran
    assert near.tokens_per_round == 24 / near.rounds > 1


def test_stops_where_plain_decoding_stops():
    cfg = gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64)
    target = _random(cfg, 0)
    plain = gu.generate(target, PROMPTS, 24)
    stop = int(plain[0, 12])  # a token row 0 produces mid-way
    want = gu.generate(target, PROMPTS, 24, eos_token_id=stop, pad_token_id=0)
    got = gu.generate(target, PROMPTS, 24, eos_token_id=stop, pad_token_id=0, draft_model=_near(target, 0.1))
    assert torch.equal(got, want)
    assert bool((got[0, 13:] == 0).all())


def _exact_marginals(model: gu.CausalLM, prompt: list[int], steps: int, **sampling) -> list[torch.Tensor]:
    """The target's sampling distribution of each of the next `steps` tokens, by enumerating every path."""
    from groundup.generate.sampling import probabilities

    V = model.config.vocab_size
    paths = torch.tensor([prompt])  # [N, T]
    weight = torch.ones(1)  # probability of each path
    out = []
    with torch.no_grad():
        for _ in range(steps):
            p = probabilities(model(paths)[:, -1], **sampling)  # [N, V]
            joint = weight[:, None] * p  # [N, V]
            out.append(joint.sum(0))
            paths = torch.cat([paths.repeat_interleave(V, 0), torch.arange(V).repeat(paths.shape[0])[:, None]], 1)
            weight = joint.reshape(-1)
    return out


def _tv(counts: torch.Tensor, p: torch.Tensor) -> float:
    return float((counts / counts.sum() - p).abs().sum() / 2)


SAMPLING = dict(temperature=0.9, top_k=6)


@pytest.mark.parametrize("confidence", [0.0, 0.4])
def test_sampled_tokens_follow_the_target_distribution(confidence):
    """One row at a time (so whole runs of guesses are kept), 600 seeds: each position's tokens are
    distributed as the target's, not the draft's (a nudged copy that the target half agrees with)."""
    cfg = gu.Config(vocab_size=8, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=32)
    target = _random(cfg, 0, std=0.6)
    draft = _near(target, 0.05)
    prompt, steps = [1, 2, 3], 3
    want = _exact_marginals(target, prompt, steps, **SAMPLING)
    other = _exact_marginals(draft, prompt, steps, **SAMPLING)
    counts = torch.zeros(steps, 8)
    stats = SpeculativeStats()
    for seed in range(600):
        out = gu.generate(target, [prompt], steps, draft_model=draft, num_draft_tokens=3, seed=seed, stats=stats,
                          draft_confidence=confidence, **SAMPLING)
        counts[torch.arange(steps), out[0, 3:]] += 1
    assert 0.3 < stats.acceptance_rate < 0.8 and stats.tokens_per_round > 1.3
    for i in range(steps):
        assert _tv(counts[i], want[i]) < 0.08, (i, counts[i], want[i])
    assert max(_tv(counts[i], other[i]) for i in range(steps)) > 0.2  # the test tells the two apart


def test_a_batch_in_lockstep_samples_the_target_distribution():
    """2000 rows of one prompt: almost every round stops at some row's first rejection, so the tokens come
    from the accepted guesses of the other rows and the leftover distribution of the rejecting rows."""
    cfg = gu.Config(vocab_size=8, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=32)
    target, draft = _random(cfg, 0, std=0.6), _random(cfg.replace(n_layers=1), 5, std=0.6)
    prompt, steps = [1, 2, 3], 2
    want = _exact_marginals(target, prompt, steps, **SAMPLING)
    out = gu.generate(target, [prompt] * 2000, steps, draft_model=draft, num_draft_tokens=2, seed=0, **SAMPLING)
    for i in range(steps):
        counts = torch.bincount(out[:, 3 + i], minlength=8).float()
        assert _tv(counts, want[i]) < 0.05, (i, counts, want[i])


def test_draft_errors():
    cfg = gu.Config(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64)
    target = _random(cfg, 0)
    with pytest.raises(ValueError, match="vocab_size=62"):
        gu.generate(target, PROMPTS, 4, draft_model=gu.CausalLM(cfg.replace(vocab_size=62)))
    with pytest.raises(ValueError, match="num_draft_tokens=0"):
        gu.generate(target, PROMPTS, 4, draft_model=target, num_draft_tokens=0)
    with pytest.raises(ValueError, match="draft_confidence=1"):
        gu.generate(target, PROMPTS, 4, draft_model=target, draft_confidence=1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        gu.generate(target, PROMPTS, 4, draft_model=target, repetition_penalty=1.2)
    short = gu.CausalLM(cfg.replace(pos="learned", max_seq_len=12))
    with pytest.raises(ValueError, match="draft_model: prompt"):
        gu.generate(target, PROMPTS, 8, draft_model=short)
    longrope = _random(cfg.replace(pos="rope", rope_scaling="longrope", rope_scaling_factor=4.0,
                                   rope_original_max_seq_len=16, rope_short_factor=[1.0] * 4,
                                   rope_long_factor=[2.0] * 4), 1)
    with pytest.raises(ValueError, match="longrope"):
        gu.generate(longrope, PROMPTS, 4, draft_model=target)
