"""transformers + peft rollout engine: every expert in one batched `generate`, routed per row.

The reference engine (runs anywhere torch does). Requests of all experts share one `generate` call
per chunk of `max_batch_size` rows; `RoutedLoRA` applies each row's expert. Prompts go through the
model's own processor (images, videos), left-padded, once (`policies.prompts`); each completion
carries its request's encoded prompt, which the learner trains on as it is. With the dense branch
(`dense.enabled`) its hook on the vision tower fuses the visual tokens in `generate` natively.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

import torch
from transformers import (GenerationConfig, LogitsProcessor, SuppressTokensLogitsProcessor, TemperatureLogitsWarper,
                          TopPLogitsWarper)

from spacevista.configs.dense import DenseConfig
from spacevista.policies.chat import media_token_ids
from spacevista.policies.dense.branch import DenseBranch
from spacevista.policies.experts import ExpertLoRAConfig, attach_experts, load_expert_state_dict
from spacevista.policies.prompts import encode_batch
from spacevista.policies.tiny import load_policy
from spacevista.rollout.engine import (Completion, GenerationRequest, SamplingParams, check_experts, check_update,
                                       cut_at_eos)
from spacevista.rollout.engine_weights import EngineWeights
from spacevista.rollout.routed_lora import RoutedLoRA


class _SampledLogprobs(LogitsProcessor):
    """Records log p(sampled token) under the final processed scores, one step behind.

    Placed last in the processor list, it sees the scores the sampler draws from; the token drawn at
    step t shows up in `input_ids` at step t+1. Keeps one [rows, vocab] tensor, never the whole
    history (`output_scores` would hold steps x rows x vocab).
    """

    def __init__(self) -> None:
        self._last: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._collect(input_ids[:, -1])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _collect(self, tokens: torch.Tensor) -> None:
        if self._last is not None:
            self.steps.append(self._last.gather(1, tokens[:, None].to(self._last.device))[:, 0])
            self._last = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[rows, generated steps] log-probs, given the full output sequences."""
        self._collect(sequences[:, -1])
        return torch.stack(self.steps, dim=1).cpu() if self.steps else torch.zeros(sequences.shape[0], 0)


class HFEngine(EngineWeights):
    """Rollout with transformers + peft on one device; see `Engine` for the contract."""

    def __init__(self, model_path: str | os.PathLike, expert_names: Sequence[str],
                 lora: ExpertLoRAConfig | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, max_batch_size: int = 64, dense: DenseConfig | None = None):
        model, self.processor = load_policy(model_path, dtype=dtype, device=device)
        self.tokenizer = self.processor.tokenizer
        self._no_media = SuppressTokensLogitsProcessor(media_token_ids(model.config), device=device)
        gen = model.generation_config
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self._token_ids = dict(bos_token_id=gen.bos_token_id, eos_token_id=gen.eos_token_id, pad_token_id=pad)
        # Token ids only: a checkpoint's sampling defaults (e.g. repetition_penalty) must not leak into rollouts.
        model.generation_config = GenerationConfig(**self._token_ids)
        eos = self._token_ids["eos_token_id"]
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        self._experts = list(expert_names)
        self.model = attach_experts(model, self._experts, lora, trainable=False).eval()
        self._routed = RoutedLoRA(self.model, self._experts)
        enabled = dense is not None and dense.enabled
        self.dense = DenseBranch.build(dense, self.model, self.processor, device) if enabled else None
        self.dense_version = 0
        self.device = device
        self._rng_devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
        self.max_batch_size = max_batch_size
        self._version = 0
        self._lock = threading.Lock()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def update_experts(self, version: int, weights: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        check_update(weights, self._experts)
        with self._lock:
            for expert, state in weights.items():
                load_expert_state_dict(self.model, expert, state)
            self._routed.refresh()
            self._version = version

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        check_experts(requests, self._experts)
        chunk = max(1, self.max_batch_size // params.distinct_samples)
        # Seeded sampling without disturbing the process's global RNG streams.
        with self._lock, torch.random.fork_rng(devices=self._rng_devices), torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out: list[Completion] = []
            for start in range(0, len(requests), chunk):
                out += self._generate_chunk(requests[start:start + chunk], params)
            return out

    def _generation_config(self, params: SamplingParams) -> tuple[GenerationConfig, list[LogitsProcessor]]:
        """The config for `generate`, and the warpers to run ahead of the logprob recorder.

        transformers runs caller-given processors BEFORE its own temperature/top-p warpers, so the
        recorder would not see the sampled distribution: we apply the warpers ourselves, ahead of it.
        """
        warpers: list[LogitsProcessor] = []
        if not params.greedy and params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if not params.greedy and params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        neutral = {} if params.greedy else dict(temperature=1.0, top_p=1.0, top_k=0)  # no warpers of its own
        config = GenerationConfig(
            **self._token_ids, do_sample=not params.greedy, **neutral,
            max_new_tokens=params.max_tokens, min_new_tokens=params.min_tokens or None,
            num_return_sequences=params.distinct_samples,
            return_dict_in_generate=True)
        return config, warpers

    def _generate_chunk(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        batch, prompts = encode_batch(self.processor, requests)
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        rows = params.distinct_samples
        prompt_len = inputs["input_ids"].shape[1]
        recorder = _SampledLogprobs()
        config, warpers = self._generation_config(params)
        expert_index = self._routed.expert_index([r.expert for r in requests for _ in range(rows)])
        with self._routed.route(expert_index):
            output = self.model.generate(**inputs, generation_config=config,
                                         logits_processor=[self._no_media, *warpers, recorder])
        generated = output.sequences[:, prompt_len:].cpu()
        logprobs = recorder.finish(output.sequences)
        completions = []
        for i, (request, prompt) in enumerate(zip(requests, prompts)):
            for k in range(params.n):
                row = i * rows + (0 if params.greedy else k)
                ids, finish = cut_at_eos(generated[row].tolist(), self._eos_ids)
                completions.append(Completion(
                    request_id=request.request_id, sample_index=k, expert=request.expert, prompt=prompt,
                    response_ids=ids, text=self._decode(ids), logprobs=logprobs[row, :len(ids)].tolist(),
                    finish_reason=finish, adapter_version=self._version))
        return completions
