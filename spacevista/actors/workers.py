"""Rollout and reward workers: thin Ray actors around an Engine and a RewardPipeline.

Both are restart-safe: Ray restarts a crashed worker (`max_restarts`) and re-runs the call that was
in flight (`max_task_retries`). A rollout worker that restarted has lost its adapter weights, so
every `generate` call carries a reference to the latest weights and the worker applies them when
its own version is older; a reward worker gets the stage's weights with each call. No call
depends on state a restart would lose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
import torch

from spacevista.configs.schema import ModelConfig, RewardConfig, RewardWeights, RolloutConfig
from spacevista.records.frames import load_images, load_video
from spacevista.records.schema import Record
from spacevista.rollout.engine import Completion, GenerationRequest
from spacevista.rollout.snapshot import PolicySnapshot

PROMPTS = ("ref", "drop", "keep")  # what a rollout worker returns of the encoded prompts


@dataclass
class RolloutItem:
    """One prompt for a rollout worker: its record (frames as paths or inline bytes: decoded, and
    visual prompts drawn, by the worker, so frames never pass through the controller) and its expert."""

    request_id: str
    record: Record
    expert: str

    def request(self) -> GenerationRequest:
        r = self.record
        return GenerationRequest(request_id=self.request_id, messages=list(r.prompt), expert=self.expert,
                                 images=load_images(r), videos=[load_video(r, v) for v in range(len(r.videos))])


def _requests(items: list) -> list[GenerationRequest]:
    return [item.request() if isinstance(item, RolloutItem) else item for item in items]


def ship_prompts(completions: list[Completion], mode: str) -> list[Completion]:
    """How the encoded prompts travel back with their completions (the learner's `share_prompts` is another
    thing: one forward per distinct prompt). `ref`: each request's encoded prompt into the object store once,
    its n completions holding the reference (the learner fetches it; the controller never does); `drop`:
    none (evaluation); `keep`: as is."""
    if mode not in PROMPTS:
        raise ValueError(f"prompts={mode!r} is not one of {PROMPTS}")
    if mode == "keep":
        return completions
    shared: dict[int, tuple[Any, Any]] = {}  # id(prompt) -> (the prompt, kept alive; its ref)
    for c in completions:
        if mode == "drop":
            c.prompt = None
            continue
        if id(c.prompt) not in shared:
            shared[id(c.prompt)] = (c.prompt, ray.put(c.prompt))
        c.prompt = shared[id(c.prompt)][1]
    return completions


def init_actor_process() -> None:
    """Per-process setup for every worker: torch threads from the CPUs Ray gave it; quiet loaders."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, int(float(os.environ.get("SPACEVISTA_ACTOR_THREADS", "1")))))
    hf_logging.disable_progress_bar()


@ray.remote
class RolloutWorker:
    """Holds one generation engine (HF or vLLM) with every scale expert loaded."""

    def __init__(self, model_path: str, model: ModelConfig, rollout: RolloutConfig):
        init_actor_process()
        from spacevista.rollout import make_engine

        self.engine = make_engine(rollout, model_path, model)
        self.held: dict[str, int] = {}  # part -> the snapshot version it was last loaded from (none: INITIAL_VERSION)

    def generate(self, items: list, params: Any, snapshot: PolicySnapshot, prompts: str = "ref") -> list:
        """Generate with the `snapshot` policy for `RolloutItem`s (or ready `GenerationRequest`s); every completion
        records `snapshot.version`. The snapshot's parts are refs nested in a dataclass, which Ray does not fetch:
        this worker pulls only the parts it is behind on (all of them after a restart) and applies them
        atomically. `prompts`: see `ship_prompts`."""
        self.apply(snapshot)
        return ship_prompts(self.engine.generate(_requests(items), params), prompts)

    def apply(self, snapshot: PolicySnapshot) -> None:
        """Serve `snapshot` from now on: pull and load the parts newer than those held, take its version."""
        if snapshot.version < self.engine.version and self.held:
            raise ValueError(f"policy snapshot {snapshot.version} is older than the served {self.engine.version}")
        experts, dense = snapshot.behind(self.held)
        refs = [*experts.values(), *([dense] if dense is not None else [])]
        fetched = ray.get(refs) if refs and isinstance(refs[0], ray.ObjectRef) else refs
        if dense is not None:
            self.engine.update_dense(snapshot.version, fetched.pop())
        if experts or snapshot.version != self.engine.version:
            self.engine.update_experts(snapshot.version, dict(zip(experts, fetched)))
        self.held.update(snapshot.part_versions())

    def encode(self, items: list) -> list:
        """Object-store refs of the items' encoded prompts (a resumed run's pending rollout needs them)."""
        from spacevista.policies.prompts import encode_prompts

        return [ray.put(p) for p in encode_prompts(self.engine.processor, _requests(items))]

    def version(self) -> int:
        return self.engine.version

    def ping(self) -> int:
        return os.getpid()


@ray.remote
class RewardWorker:
    """Holds the reward pipeline (stepwise reward + plugins); stateless between calls."""

    def __init__(self, reward_config: RewardConfig, registered: dict[str, Any] | None = None):
        from spacevista.rewards.pipeline import RewardPipeline
        from spacevista.rewards.registry import register_reward

        for name, fn in (registered or {}).items():  # @register_reward plugins of the driver process
            register_reward(name)(fn)
        self.pipeline = RewardPipeline(reward_config)  # a plugin that fails to import fails here, at start

    def score(self, items: list, weights: RewardWeights | None = None,
              plugin_weights: dict[str, float] | None = None) -> list:
        """Breakdowns of `items`, with the stage's `weights` and `plugin_weights` when given (see
        `RewardPipeline.set_weights`)."""
        if weights is not None:
            self.pipeline.set_weights(weights, plugin_weights)
        return self.pipeline.score_batch(items)

    def ping(self) -> int:
        return os.getpid()
