"""spacevista.rewards.compute_score works unchanged as verl's custom_reward_function."""

import asyncio
import json

import pytest

verl_reward = pytest.importorskip("verl.trainer.ppo.reward")

import numpy as np  # noqa: E402  (after the skip: verl brings numpy and torch)
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager  # noqa: E402

import spacevista.rewards  # noqa: E402
from spacevista.scales import format_output  # noqa: E402

GROUND_TRUTH = json.dumps({"type": "numeric", "value": 3.0, "unit": "m", "choices": None,
                           "scale": "indoor", "task": "object_size"})
COMPLETION = format_output("the shelf is three tiles long", "indoor", "300 cm")


def custom_reward_fn(path):
    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": path, "name": "compute_score", "reward_kwargs": {}}}})
    return verl_reward.get_custom_reward_fn(config)


@pytest.mark.parametrize("path", ["pkg://spacevista.rewards", spacevista.rewards.__file__])
def test_verl_loads_compute_score_by_package_or_file(path):
    fn = custom_reward_fn(path)
    result = fn(data_source="spacevista", solution_str=COMPLETION, ground_truth=GROUND_TRUTH, extra_info={})
    assert result["score"] == 1.0


class CharTokenizer:
    """One token per character: enough for the reward manager's decode."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


def test_verls_naive_reward_manager_scores_a_response():
    ids = torch.tensor([[ord(c) for c in COMPLETION]])
    data = DataProto.from_dict(
        tensors={"responses": ids, "attention_mask": torch.ones_like(ids)},
        non_tensors={"data_source": np.array(["spacevista"]), "extra_info": np.array([{}]),
                     "reward_model": np.array([{"style": "rule", "ground_truth": GROUND_TRUTH}])})

    async def run():
        manager = NaiveRewardManager(None, CharTokenizer(), custom_reward_fn("pkg://spacevista.rewards"))
        return await manager.run_single(data)

    result = asyncio.run(run())
    assert result["reward_score"] == 1.0
    assert result["reward_extra_info"]["accuracy"] == 1.0


def test_extra_info_stacks_across_answer_types_as_verl_does():
    fn = custom_reward_fn("pkg://spacevista.rewards")
    choice = json.dumps({"type": "choice", "value": "A", "unit": None, "choices": ["x", "y"],
                         "scale": "tabletop", "task": "closer"})
    infos = [fn(data_source="s", solution_str=COMPLETION, ground_truth=gt, extra_info={})
             for gt in (GROUND_TRUTH, choice, "not json")]
    stacked = {key: np.array([info[key] for info in infos]) for key in infos[0]}  # verl reward_loop's stacking
    assert stacked["answer_type"].tolist() == ["numeric", "choice", ""]
