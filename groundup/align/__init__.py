"""Alignment: reward models from preferences, PPO with a KL penalty, the direct methods (DPO, IPO, KTO, ORPO,
SimPO) and GRPO with verifiable rewards, all through the one training loop (train/loop.py).

losses.py holds the formulas; logps.py the answer log-probabilities; reward.py the reward model and its
transformers folder; direct.py the offline objectives; online.py the rollouts of PPO and GRPO; run.py the
`groundup align` pipeline.
"""

from .direct import DIRECT, DirectSettings, PreferenceObjective, attach_reference, reward_accuracy
from .logps import TokenLogps, token_logps
from .reward import RewardModel, is_reward_folder, load_reward_model

__all__ = ["DIRECT", "DirectSettings", "PreferenceObjective", "RewardModel", "TokenLogps", "attach_reference",
           "is_reward_folder", "load_reward_model", "reward_accuracy", "token_logps"]
