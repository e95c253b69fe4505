"""Loss parity with trl 1.16 on fixed inputs: the same tiny model, weights, batch and hyper-parameters give
groundup's DPO (sigmoid, robust, hinge), IPO, KTO, ORPO and reward-model losses and logged rewards within 1e-5
(fp32). trl's own trainers compute the reference: each is built on the transformers model and its
`_compute_loss` / `compute_loss` is called on its collator's batch of the same ids."""

from __future__ import annotations

import pytest
import torch

from tests.align.align_util import align_folders, fixed_pairs, hf_tokenizer  # noqa: F401

pytest.importorskip("trl")

# fp32 on the CPU (trl defaults to bf16) and no recomputation
COMMON = {"report_to": [], "bf16": False, "use_cpu": True, "gradient_checkpointing": False}


def trl_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": "one two", "chosen": " three", "rejected": " five"}] * 2)


def groups_of(records, kind: str = "pairs"):
    from groundup.data.preference import PreferenceGroup

    if kind == "pairs":
        return [PreferenceGroup(r["prompt_ids"], [r["chosen_ids"], r["rejected_ids"]], [(0, 1, 0.0)], [True, False],
                                f"r{i}") for i, r in enumerate(records)]
    return [PreferenceGroup(r["prompt_ids"], [r["completion_ids"]], [], [r["label"]], f"r{i}",
                            kl=r["KL_completion_ids"]) for i, r in enumerate(records)]


def gu_models(folders):
    import groundup as gu

    return gu.from_pretrained(folders["policy"], dtype=torch.float32), gu.from_pretrained(folders["ref"],
                                                                                          dtype=torch.float32)


def gu_loss(method, folders, groups, **settings):
    from groundup.align import DirectSettings, PreferenceObjective, attach_reference
    from groundup.data.preference import collate_groups

    policy, ref = gu_models(folders)
    pad = folders["tok"].pad_token_id
    if method in ("dpo", "ipo", "kto"):
        attach_reference(groups, ref, pad)
    obj = PreferenceObjective(method, DirectSettings(**settings))
    loss, _ = obj.loss(policy.train(), collate_groups(groups, pad), 0)
    return loss.item(), obj.metrics()


def trl_metrics(trainer) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in trainer._metrics["train"].items()}


def dpo_trainer(folders, tmp_path, **cfg):
    import transformers as T
    from trl import DPOConfig, DPOTrainer

    model = T.AutoModelForCausalLM.from_pretrained(folders["policy"], dtype=torch.float32)
    ref = T.AutoModelForCausalLM.from_pretrained(folders["ref"], dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), **COMMON, per_device_train_batch_size=4, **cfg)
    return DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=trl_dataset(),
                      processing_class=hf_tokenizer(folders["policy"]))


@pytest.mark.parametrize(("ours", "theirs"), [
    ({"method": "dpo", "beta": 0.1}, {"loss_type": ["sigmoid"], "beta": 0.1}),
    ({"method": "dpo", "beta": 0.3, "dpo_loss": "robust", "label_smoothing": 0.1},
     {"loss_type": ["robust"], "beta": 0.3, "label_smoothing": 0.1}),
    ({"method": "dpo", "beta": 0.2, "dpo_loss": "hinge"}, {"loss_type": ["hinge"], "beta": 0.2}),
    ({"method": "ipo", "beta": 0.5}, {"loss_type": ["ipo"], "beta": 0.5}),
    ({"method": "dpo", "beta": 0.1, "sft_weight": 0.7}, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7],
                                                          "beta": 0.1}),
])
def test_dpo_family_equals_trl(align_folders, tmp_path, ours, theirs):
    records = fixed_pairs(align_folders["tok"].vocab_size)
    trainer = dpo_trainer(align_folders, tmp_path, **theirs)
    trainer.model.train()
    expected = trainer._compute_loss(trainer.model, trainer.data_collator(records), return_outputs=False).item()
    m = trl_metrics(trainer)
    ours = dict(ours)
    loss, got = gu_loss(ours.pop("method"), align_folders, groups_of(records), **ours)
    assert loss == pytest.approx(expected, abs=1e-5)
    assert got["rewards_chosen"] == pytest.approx(m["rewards/chosen"], abs=1e-5)
    assert got["rewards_rejected"] == pytest.approx(m["rewards/rejected"], abs=1e-5)
    assert got["margin"] == pytest.approx(m["rewards/margins"], abs=1e-5)
    assert got["accuracy"] == pytest.approx(m["rewards/accuracies"], abs=1e-6)
    assert got["logps_chosen"] == pytest.approx(m["logps/chosen"], abs=1e-4)
    assert got["entropy"] == pytest.approx(m["entropy"], abs=1e-4)
    assert abs(loss) > 1e-3  # a real loss, not a degenerate zero


def test_kto_equals_trl(align_folders, tmp_path):
    import transformers as T
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    pairs = fixed_pairs(align_folders["tok"].vocab_size, n=5, seed=3)
    answers = [r["chosen_ids"] if i % 2 else r["rejected_ids"] for i, r in enumerate(pairs)]
    records = [{"prompt_ids": r["prompt_ids"], "completion_ids": a, "label": bool(i % 3), "KL_completion_ids":
                answers[i - 1]} for i, (r, a) in enumerate(zip(pairs, answers, strict=True))]
    model = T.AutoModelForCausalLM.from_pretrained(align_folders["policy"], dtype=torch.float32)
    ref = T.AutoModelForCausalLM.from_pretrained(align_folders["ref"], dtype=torch.float32)
    args = KTOConfig(output_dir=str(tmp_path / "trl"), **COMMON, per_device_train_batch_size=5, beta=0.2,
                     desirable_weight=1.0, undesirable_weight=1.3)
    data = Dataset.from_list([{"prompt": "one", "completion": " two", "label": True},
                              {"prompt": "one", "completion": " six", "label": False}] * 3)
    trainer = KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                         processing_class=hf_tokenizer(align_folders["policy"]))
    trainer.model.train()
    expected = trainer._compute_loss(trainer.model, trainer.data_collator(records), return_outputs=False).item()
    m = trl_metrics(trainer)
    loss, got = gu_loss("kto", align_folders, groups_of(records, "unpaired"), beta=0.2, undesirable_weight=1.3)
    assert loss == pytest.approx(expected, abs=1e-5)
    assert got["kl"] == pytest.approx(m["kl"], abs=1e-5)
    assert got["rewards_chosen"] == pytest.approx(m["rewards/chosen"], abs=1e-5)
    assert got["rewards_rejected"] == pytest.approx(m["rewards/rejected"], abs=1e-5)


def test_orpo_equals_trl(align_folders, tmp_path):
    import transformers as T
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    records = fixed_pairs(align_folders["tok"].vocab_size, seed=5)
    model = T.AutoModelForCausalLM.from_pretrained(align_folders["policy"], dtype=torch.float32)
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), **COMMON, per_device_train_batch_size=4, beta=0.25)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=trl_dataset(),
                          processing_class=hf_tokenizer(align_folders["policy"]))
    batch = trainer.data_collator([trl_orpo_row(r, trainer) for r in records])
    trainer.model.train()
    expected, m = trainer.get_batch_loss_metrics(trainer.model, batch)
    loss, got = gu_loss("orpo", align_folders, groups_of(records), beta=0.25)
    assert loss == pytest.approx(expected.item(), abs=1e-5)
    assert got["nll"] == pytest.approx(m["nll_loss"], abs=1e-5)
    assert got["log_odds_ratio"] == pytest.approx(m["log_odds_ratio"], abs=1e-5)
    assert got["rewards_chosen"] == pytest.approx(m["rewards/chosen"], abs=1e-5)
    assert got["margin"] == pytest.approx(m["rewards/margins"], abs=1e-5)


def trl_orpo_row(r: dict, trainer) -> dict:
    """ORPOTrainer's tokenized row format for given ids (its tokenize_row, without the tokenizing)."""
    p, c, j = r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]
    row = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
    for name, a in (("chosen", c), ("rejected", j)):
        row[f"{name}_input_ids"] = p + a
        row[f"{name}_attention_mask"] = [1] * (len(p) + len(a))
        row[f"{name}_labels"] = [-100] * len(p) + a
    return row


def test_reward_model_loss_equals_trl(align_folders, tmp_path):
    import transformers as T
    from trl import RewardConfig, RewardTrainer

    import groundup as gu
    from groundup.align import DirectSettings, PreferenceObjective, RewardModel
    from groundup.data.preference import collate_groups

    torch.manual_seed(0)
    rm = RewardModel(gu.from_pretrained(align_folders["policy"], dtype=torch.float32))
    rm.save_pretrained(tmp_path / "rm")
    records = fixed_pairs(align_folders["tok"].vocab_size, seed=7)
    rows = [{"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"],
             "margin": 0.1 * i} for i, r in enumerate(records)]
    hf = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", dtype=torch.float32)
    args = RewardConfig(output_dir=str(tmp_path / "trl"), **COMMON, per_device_train_batch_size=4,
                        center_rewards_coefficient=0.05)
    from datasets import Dataset

    trainer = RewardTrainer(model=hf, args=args, processing_class=hf_tokenizer(align_folders["policy"]),
                            train_dataset=Dataset.from_list([{"chosen": "one two", "rejected": "one five"}] * 2))
    trainer.model.train()
    expected = trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()
    m = trl_metrics(trainer)
    groups = groups_of(records)
    for i, g in enumerate(groups):
        g.pairs = [(0, 1, 0.1 * i)]
    obj = PreferenceObjective("rm", DirectSettings(center_rewards=0.05))
    loss, _ = obj.loss(rm.train(), collate_groups(groups, align_folders["tok"].pad_token_id), 0)
    got = obj.metrics()
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert got["accuracy"] == pytest.approx(m["accuracy"], abs=1e-6)
    assert got["margin"] == pytest.approx(m["margin"], abs=1e-5)
    assert got["reward"] == pytest.approx(m["mean_reward"], abs=1e-5)
