"""PPO and GRPO against their references.

PPO: trl deleted its PPOTrainer after 1.12.0, and 1.12 cannot be installed beside the suite's trl 1.16 (its
formulas also sit inline in `PPOTrainer.train`, not in functions a test could call), so the reference
here is trl 1.12's `PPOTrainer.train` code path re-derived step by step from its source (the
post-rollout block: INVALID_LOGPROB masking, padding_mask / padding_mask_p1, k1/k3 KL, the score at
`actual_end`, optional reward whitening, the GAE loop, `masked_whiten` of the advantages, then the
minibatch's clipped policy and value losses). groundup's `score_at="after"` is that convention exactly;
its default `score_at="last"` puts the score on the last response token, and equals it on rows that fill
the response width.

GRPO: trl 1.16's GRPOTrainer computes the loss on the same completions, advantages and reference log-probs.
"""

from __future__ import annotations

import pytest
import torch

from groundup.align import losses
from tests.align.align_util import align_folders, hf_tokenizer  # noqa: F401

INVALID_LOGPROB = 1.0


def trl112_post_rollout(logprobs, ref_logprobs, values, scores, seq_len, *, kl_coef, kl_estimator, gamma, lam,
                        whiten_rewards):
    """trl 1.12 PPOTrainer.train, steps 3-6, on [B, W] tensors (seq_len: index of each row's last token)."""
    B, W = logprobs.shape
    response_idxs = torch.arange(W).repeat(B, 1)
    padding_mask = response_idxs > seq_len.unsqueeze(1)
    logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
    seq_len_p1 = seq_len + 1
    padding_mask_p1 = response_idxs > seq_len_p1.unsqueeze(1)
    values = torch.masked_fill(values, padding_mask_p1, 0)
    logr = ref_logprobs - logprobs
    kl = -logr if kl_estimator == "k1" else (logr.exp() - 1) - logr
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(B)
    actual_end = torch.where(seq_len_p1 < W, seq_len_p1, seq_len)
    rewards[actual_start, actual_end] += scores
    if whiten_rewards:
        rewards = losses.masked_whiten(rewards, ~padding_mask_p1, shift_mean=False)
        rewards = torch.masked_fill(rewards, padding_mask_p1, 0)
    lastgaelam = 0
    rev = []
    for t in reversed(range(W)):
        nextvalues = values[:, t + 1] if t < W - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        rev.append(lastgaelam)
    advantages = torch.stack(rev[::-1], dim=1)
    returns = advantages + values
    advantages = losses.masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)
    return dict(rewards=rewards, kl=kl, advantages=advantages, returns=returns, values=values, logprobs=logprobs,
                padding_mask=padding_mask, padding_mask_p1=padding_mask_p1)


def trl112_minibatch_loss(new_logprobs, ref, vpred, *, cliprange, cliprange_value, vf_coef):
    pm, pm1 = ref["padding_mask"], ref["padding_mask_p1"]
    new_logprobs = torch.masked_fill(new_logprobs, pm, INVALID_LOGPROB)
    vpred = torch.masked_fill(vpred, pm1, 0)
    vclip = torch.clamp(vpred, ref["values"] - cliprange_value, ref["values"] + cliprange_value)
    vf1, vf2 = (vpred - ref["returns"]) ** 2, (vclip - ref["returns"]) ** 2
    vf_loss = 0.5 * losses.masked_mean(torch.max(vf1, vf2), ~pm1)
    diff = new_logprobs - ref["logprobs"]
    ratio = torch.exp(diff)
    pg1 = -ref["advantages"] * ratio
    pg2 = -ref["advantages"] * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = losses.masked_mean(torch.max(pg1, pg2), ~pm)
    return dict(loss=pg_loss + vf_coef * vf_loss, pg_loss=pg_loss, vf_loss=vf_loss,
                pg_clipfrac=losses.masked_mean((pg2 > pg1).float(), ~pm),
                vf_clipfrac=losses.masked_mean((vf2 > vf1).float(), ~pm1), approxkl=0.5 * (diff ** 2).mean())


def rollout_tensors(B=5, W=7, seed=0, full=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((B,), W) if full else torch.tensor([W, 3, 5, 1, W - 1][:B])
    valid = torch.arange(W).unsqueeze(0) < lengths.unsqueeze(1)
    lp = -torch.rand(B, W, generator=g) * 3
    ref = lp + 0.3 * torch.randn(B, W, generator=g)
    values = torch.randn(B, W, generator=g)
    scores = torch.randn(B, generator=g) * 2
    new_lp = lp + 0.25 * torch.randn(B, W, generator=g)
    vpred = values + 0.4 * torch.randn(B, W, generator=g)
    return valid, lengths - 1, lp, ref, values, scores, new_lp, vpred


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("whiten", [False, True])
def test_ppo_after_convention_equals_trl_112(estimator, whiten):
    valid, seq_len, lp, ref_lp, values, scores, new_lp, vpred = rollout_tensors()
    hp = dict(kl_coef=0.07, gamma=0.99, lam=0.9)
    theirs = trl112_post_rollout(lp, ref_lp, values, scores, seq_len, kl_estimator=estimator, whiten_rewards=whiten,
                                 **hp)
    rewards, kl, _ = losses.ppo_rewards(lp, ref_lp, scores, valid, kl_coef=hp["kl_coef"], estimator=estimator,
                                        score_at="after")
    value_valid = ~theirs["padding_mask_p1"]
    v = values * value_valid
    if whiten:
        rewards = losses.masked_whiten(rewards, value_valid, shift_mean=False) * value_valid
    adv, returns = losses.gae(rewards, v, gamma=hp["gamma"], lam=hp["lam"])
    adv = losses.masked_whiten(adv, valid) * valid
    torch.testing.assert_close(rewards, theirs["rewards"], atol=1e-6, rtol=0)
    torch.testing.assert_close(kl * valid, theirs["kl"], atol=1e-6, rtol=0)
    torch.testing.assert_close(adv, theirs["advantages"], atol=1e-5, rtol=0)
    torch.testing.assert_close(returns, theirs["returns"], atol=1e-5, rtol=0)
    ours = losses.ppo_losses(new_lp, lp, adv, valid, vpred * value_valid, v, returns, value_valid, cliprange=0.2,
                             cliprange_value=0.2, vf_coef=0.1)
    expected = trl112_minibatch_loss(new_lp, theirs, vpred, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    for k, want in expected.items():
        assert ours[k].item() == pytest.approx(want.item(), abs=1e-6), k
    assert 0 < ours["pg_clipfrac"] < 1  # the clip really acts in this test


def test_ppo_last_token_convention_equals_trl_on_full_rows():
    valid, seq_len, lp, ref_lp, values, scores, *_ = rollout_tensors(full=True, seed=2)
    theirs = trl112_post_rollout(lp, ref_lp, values, scores, seq_len, kl_coef=0.05, kl_estimator="k1", gamma=1.0,
                                 lam=0.95, whiten_rewards=False)
    rewards, _, _ = losses.ppo_rewards(lp, ref_lp, scores, valid, kl_coef=0.05)
    adv, returns = losses.gae(rewards, values, gamma=1.0, lam=0.95)
    torch.testing.assert_close(rewards, theirs["rewards"], atol=1e-6, rtol=0)
    torch.testing.assert_close(losses.masked_whiten(adv, valid), theirs["advantages"], atol=1e-5, rtol=0)
    torch.testing.assert_close(returns, theirs["returns"], atol=1e-5, rtol=0)


def test_ppo_last_token_reward_on_padded_rows():
    """The score sits on the last response token, nothing past it gets reward or advantage."""
    valid, seq_len, lp, ref_lp, values, scores, *_ = rollout_tensors(seed=4)
    rewards, _, non_score = losses.ppo_rewards(lp, ref_lp, scores, valid, kl_coef=0.1)
    B = valid.shape[0]
    torch.testing.assert_close(rewards[torch.arange(B), seq_len] - non_score[torch.arange(B), seq_len], scores)
    assert (rewards[~valid] == 0).all()
    adv, _ = losses.gae(rewards, values * valid, gamma=1.0, lam=1.0)
    # with gamma = lam = 1, A_0 = sum of rewards - V_0: the whole episode's return minus the baseline
    torch.testing.assert_close(adv[:, 0], rewards.sum(1) - values[:, 0], atol=1e-5, rtol=0)
    assert (adv[~valid] == 0).all()


def test_grpo_loss_equals_trl(align_folders, tmp_path):
    import transformers as T
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import groundup as gu
    from groundup.align.logps import token_logps
    from groundup.data.preference import pad_rows

    V = align_folders["tok"].vocab_size
    g = torch.Generator().manual_seed(0)
    G, n_prompts = 4, 2
    prompts = [torch.randint(5, V, (3 + i,), generator=g).tolist() for i in range(n_prompts) for _ in range(G)]
    comps = [torch.randint(5, V, (1 + (k * 3) % 5,), generator=g).tolist() for k in range(G * n_prompts)]
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 2.0, 1.0])
    adv = losses.group_advantages(rewards, G)
    ids, mask = pad_rows(list(zip(prompts, comps, strict=True)), align_folders["tok"].pad_token_id)
    policy = gu.from_pretrained(align_folders["policy"], dtype=torch.float32).train()
    ref_model = gu.from_pretrained(align_folders["ref"], dtype=torch.float32)
    with torch.no_grad():
        ref_lp = token_logps(ref_model, ids, mask)
    old = None
    for kind in ("grpo", "dapo", "bnpo"):
        lp = token_logps(policy, ids, mask)
        ours, _ = losses.grpo_loss(lp.logps, lp.logps.detach() if old is None else old, ref_lp.logps, adv, lp.mask,
                                   beta=0.04, kind=kind)
        # trl: prompts left-padded, completions right-padded, per-token tensors in completion coordinates
        P, C = max(map(len, prompts)), max(map(len, comps))
        pad = align_folders["tok"].pad_token_id
        prompt_ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
        prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
        completion_ids = torch.tensor([c + [pad] * (C - len(c)) for c in comps])
        completion_mask = torch.tensor([[1] * len(c) + [0] * (C - len(c)) for c in comps])
        ref_c = torch.stack([torch.cat([ref_lp.logps[i, len(p) - 1: len(p) - 1 + len(c)],
                                        torch.zeros(C - len(c))]) for i, (p, c) in enumerate(zip(prompts, comps,
                                                                                                 strict=True))])
        model = T.AutoModelForCausalLM.from_pretrained(align_folders["policy"], dtype=torch.float32)
        args = GRPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True,
                          gradient_checkpointing=False, per_device_train_batch_size=G * n_prompts, num_generations=G,
                          beta=0.04, loss_type=kind, max_completion_length=C)
        trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                              args=args, train_dataset=Dataset.from_list([{"prompt": "one two"}] * G),
                              processing_class=hf_tokenizer(align_folders["policy"]))
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                  "completion_mask": completion_mask, "advantages": adv, "ref_per_token_logps": ref_c,
                  "num_items_in_batch": completion_mask.sum()}
        expected = trainer._compute_loss(trainer.model, inputs).item()
        assert ours.item() == pytest.approx(expected, abs=1e-5), kind
    assert abs(ours.item()) > 1e-4


def test_group_advantages_and_nan():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    a = losses.group_advantages(r, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    torch.testing.assert_close(a[:4], (r[:4] - 0.5) / (std + 1e-4))
    assert (a[4:] == 0).all()  # a group that all agrees teaches nothing
    r[1] = float("nan")
    a = losses.group_advantages(r, 4)
    assert a[1] == 0 and torch.isfinite(a).all()
