"""Rewards for spatial answers: parsing, components (format, scale, MRA, choice, count, text), the
stepwise combiner, plugins and batch scoring. Pure Python: no torch, no ray.

`compute_score` is verl's `custom_reward_function` as is: `custom_reward_function.path=pkg://spacevista.rewards`,
`custom_reward_function.name=compute_score`.
"""

# Absolute imports: verl may also load this file by path, outside its package. The reward config types live
# with the training config (configs/schema.py) and are re-exported here.
from spacevista.configs.schema import PluginConfig, RewardConfig, RewardWeights
from spacevista.rewards.components import MRA_THRESHOLDS, mean_relative_accuracy
from spacevista.grammar.parse import NoAnswer, ParsedCompletion, parse_completion
from spacevista.rewards.groups import group_totals, zero_variance_fraction
from spacevista.rewards.pipeline import RewardPipeline
from spacevista.rewards.registry import (
                                         PluginLoadError,
                                         available_rewards,
                                         call_reward,
                                         load_reward,
                                         register_reward,
)
from spacevista.rewards.stepwise import (
                                         RewardBreakdown,
                                         StepwiseReward,
                                         aggregate_breakdowns,
                                         compute_score,
)
from spacevista.grammar.truth import GroundTruth, GroundTruthError, parse_ground_truth

__all__ = [
    "MRA_THRESHOLDS", "GroundTruth", "GroundTruthError", "NoAnswer", "ParsedCompletion", "PluginLoadError",
    "PluginConfig", "RewardBreakdown", "RewardConfig", "RewardPipeline", "RewardWeights", "StepwiseReward",
    "aggregate_breakdowns", "available_rewards", "call_reward", "compute_score", "load_reward",
    "group_totals", "mean_relative_accuracy", "parse_completion", "parse_ground_truth", "register_reward",
    "zero_variance_fraction",
]
