"""The rollout engine contract: routed generation requests in, versioned completions out.

An engine serves every scale expert at once: each request names its expert, one `generate` call
mixes experts, and `update_experts` swaps in new adapter weights atomically (a completion is
produced entirely under one adapter version). Both engines (transformers+peft, vLLM) implement it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image
from torch import Tensor

from spacevista.policies.chat import to_chat_messages
from spacevista.policies.prompts import EncodedPrompt

FinishReason = Literal["stop", "length"]

# A request routed to no expert: the base model alone (e.g. to evaluate the policy before RL).
BASE_EXPERT = "__base__"

# transformers' video processor assumes 24 fps when a clip carries no metadata; vLLM needs explicit
# metadata, and Qwen2.5-VL's temporal positions depend on it, so both engines state this one rate.
VIDEO_FPS: float = 24.0


@dataclass
class GenerationRequest:
    """One prompt routed to one expert.

    `messages` is the record's prompt: chat messages whose text holds one `<image>` / `<video>`
    placeholder per item of `images` / `videos` (in order); a video is a list of frames.
    """

    request_id: str
    messages: list[dict[str, str]]
    expert: str
    images: list[Image.Image] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The prompt as structured chat content (raises `PromptError` on a placeholder/media mismatch)."""
        return to_chat_messages(self.messages, len(self.images), len(self.videos), self.request_id)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` is greedy; `seed` makes sampling reproducible."""

    n: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    min_tokens: int = 0  # end-of-sequence suppressed until this many tokens (benchmarks: equal work per mode)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1 or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"SamplingParams: need n >= 1 and 0 <= min_tokens <= max_tokens >= 1, got "
                             f"n={self.n}, min_tokens={self.min_tokens}, max_tokens={self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams: need temperature >= 0 and 0 < top_p <= 1, "
                             f"got {self.temperature}, {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def distinct_samples(self) -> int:
        """Samples an engine must actually draw per prompt: greedy ones are all alike, so one."""
        return 1 if self.greedy else self.n


@dataclass
class Completion:
    """One sampled response, and the prompt it answers as the engine encoded it.

    `response_ids` include the end-of-sequence token when generation stopped on one. `logprobs[i]`
    is the log-probability of `response_ids[i]` under the sampling distribution: softmax of the
    logits divided by the temperature, renormalised over the top-p nucleus (greedy: the raw logits).
    `text` is `response_ids` decoded without special tokens. `prompt` is shared by the n samples of a
    request; between Ray actors it travels as an object-store reference, fetched only by the learner.
    """

    request_id: str
    sample_index: int
    expert: str
    prompt: EncodedPrompt | Any
    response_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason
    adapter_version: int

    @property
    def prompt_ids(self) -> list[int]:
        return self.prompt.input_ids


@runtime_checkable
class Engine(Protocol):
    """What a RolloutWorker drives. Implementations are thread-safe: an update never splits a batch."""

    @property
    def version(self) -> int:
        """The adapter version the next `generate` call will use."""
        ...

    @property
    def experts(self) -> list[str]:
        ...

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        """`len(requests) * params.n` completions, request-major (request i's samples are contiguous)."""
        ...

    def update_experts(self, version: int, weights: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Replace the named experts' LoRA tensors (peft saved format, see `expert_state_dict`)."""
        ...


def check_experts(requests: Sequence[GenerationRequest], experts: Sequence[str]) -> None:
    """Every request must name a served expert or `BASE_EXPERT`: an unknown name is an error, never the base model."""
    unknown = sorted({r.expert for r in requests} - set(experts) - {BASE_EXPERT})
    if unknown:
        bad = next(r for r in requests if r.expert in unknown)
        raise KeyError(f"request {bad.request_id!r} names unknown expert(s) {unknown}; serving {list(experts)}")


def check_update(weights: Mapping[str, object], experts: Sequence[str]) -> None:
    unknown = sorted(set(weights) - set(experts))
    if unknown:
        raise KeyError(f"update_experts: unknown expert(s) {unknown}; serving {list(experts)}")


def cut_at_eos(token_ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], FinishReason]:
    """A generated sequence up to and including its first end-of-sequence token."""
    ids = list(token_ids)
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[: i + 1], "stop"
    return ids, "length"
